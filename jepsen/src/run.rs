//! One test run: build the network, start and form the cluster, run the workloads' clients
//! and the nemesis for the run's time, heal everything, run the final phase (membership
//! agreement, services converged, an unsafe demote refused), check the history and write the
//! run directory: `history.jsonl`, `results.json`, the agents' logs and `report.html`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use shoal_agent::api::Response;
use shoal_sim::rng::Rng;

use crate::checker::{self, ServicesSeen};
use crate::db::{call, Db, Node, OP_TIMEOUT};
use crate::history::{Failover, NemesisEvent, OpCounts, Record, Results, Validity, Verdict};
use crate::nemesis::{self, Fault};
use crate::testbed::{self, Agent, Network};
use crate::workload::{self, Recorder};

/// Every workload, by the name `--workload` takes.
pub const WORKLOADS: &[&str] = &["register", "services"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// The test's name (the run directory's parent).
    pub test: String,
    /// Nodes.
    pub nodes: usize,
    /// Managers at the start.
    pub managers: usize,
    /// Seconds of workload and faults before the final phase.
    pub time_s: u64,
    /// Nemeses (names from [`nemesis::ALL`]).
    pub nemeses: Vec<String>,
    /// Workloads (names from [`WORKLOADS`]).
    pub workloads: Vec<String>,
    /// The seed of the schedule.
    pub seed: u64,
    /// Register clients.
    pub concurrency: usize,
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// Where run directories go (`store/`).
    pub store: PathBuf,
}

/// `2026-12-07T03-41-09Z` for a Unix time in seconds (UTC, no dependency on a time crate).
pub fn stamp(unix_s: u64) -> String {
    let days = (unix_s / 86_400) as i64;
    let secs = unix_s % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian, eras of 400 years).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}-{:02}-{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Runs one test inside the private namespace; returns the verdict and the run directory.
pub fn run(cfg: &Config) -> Result<(Validity, PathBuf), String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = cfg.store.join(&cfg.test).join(stamp(now));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let latest = cfg.store.join(&cfg.test).join("latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);
    println!("run directory {}", dir.display());

    let net = Network::create(cfg.nodes)?;
    let data = tempfile::Builder::new()
        .prefix("shoal-jepsen-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for n in &net.nodes {
        let ndir = data.path().join(&n.netns);
        let log = dir.join(format!("n{}.log", n.index));
        let agent = Agent::start(&cfg.shoal, n, &ndir, &log)?;
        nodes.push(Node {
            net: n.clone(),
            dir: ndir,
            log,
            agent: Mutex::new(Some(agent)),
            id: Mutex::new(String::new()),
            paused: Mutex::new(false),
            netem: Mutex::new(None),
        });
    }
    let db = Arc::new(Db {
        shoal: cfg.shoal.clone(),
        nodes,
    });
    form(&db, cfg.managers)?;
    println!("formed: {} nodes, {} managers", cfg.nodes, cfg.managers);

    let history = std::fs::File::create(dir.join("history.jsonl")).map_err(|e| e.to_string())?;
    let rec = Arc::new(Recorder::new(history));
    let stop = Arc::new(AtomicBool::new(false));
    let events = Arc::new(Mutex::new(Vec::<NemesisEvent>::new()));
    let failovers = Arc::new(Mutex::new(Vec::<u64>::new()));

    let mut threads = Vec::new();
    if cfg.workloads.iter().any(|w| w == "register") {
        for p in 0..cfg.concurrency as u64 {
            let (db, rec, stop, seed) = (db.clone(), rec.clone(), stop.clone(), cfg.seed);
            threads.push(std::thread::spawn(move || {
                workload::register_client(&db, &rec, p, seed, &stop)
            }));
        }
    }
    if cfg.workloads.iter().any(|w| w == "services") {
        let p = cfg.concurrency as u64;
        let (db, rec, stop, seed) = (db.clone(), rec.clone(), stop.clone(), cfg.seed);
        threads.push(std::thread::spawn(move || {
            workload::services_client(&db, &rec, p, seed, &stop)
        }));
    }
    let nemesis_stop = Arc::new(AtomicBool::new(false));
    let nemesis_thread = {
        let (db, rec, stop, events, failovers) = (
            db.clone(),
            rec.clone(),
            nemesis_stop.clone(),
            events.clone(),
            failovers.clone(),
        );
        let (names, seed) = (cfg.nemeses.clone(), cfg.seed);
        std::thread::spawn(move || {
            nemesis_loop(&db, &rec, &names, seed, &stop, &events, &failovers)
        })
    };

    let deadline = Instant::now() + Duration::from_secs(cfg.time_s);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    nemesis_stop.store(true, Ordering::Relaxed);
    let _ = nemesis_thread.join();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!("healed; final phase");
    heal_all(&db);

    let mut verdicts = Vec::new();
    verdicts.push(membership_agreement(&db, Duration::from_secs(90)));
    if cfg.workloads.iter().any(|w| w == "services") {
        let seen = final_services(&db, Duration::from_secs(120));
        let ops = rec.ops.lock().expect("ops").clone();
        verdicts.push(checker::services_set(&ops, &seen));
        verdicts.push(checker::convergence(&seen));
        verdicts.push(checker::one_task_per_slot(&seen));
    }
    verdicts.push(unsafe_demote(&db));
    rec.flush();

    // Stop the agents before reading their logs.
    for i in 1..=db.nodes.len() {
        nemesis::kill(&db, i);
    }
    let logs: Vec<(String, String)> = db
        .nodes
        .iter()
        .map(|n| {
            (
                n.name(),
                std::fs::read_to_string(&n.log).unwrap_or_default(),
            )
        })
        .collect();
    verdicts.push(checker::no_panics(&logs));
    let ops = rec.ops.lock().expect("ops").clone();
    if cfg.workloads.iter().any(|w| w == "register") {
        verdicts.insert(0, checker::registers(&ops));
    }

    let mut counts = OpCounts::default();
    for o in &ops {
        match o.outcome {
            crate::history::Outcome::Ok => counts.ok += 1,
            crate::history::Outcome::Fail => counts.fail += 1,
            crate::history::Outcome::Info => counts.info += 1,
        }
    }
    let samples = failovers.lock().expect("failovers").clone();
    let results = Results {
        test: cfg.test.clone(),
        seed: cfg.seed,
        nodes: cfg.nodes,
        managers: cfg.managers,
        time_s: cfg.time_s,
        nemeses: cfg.nemeses.clone(),
        workloads: cfg.workloads.clone(),
        valid: verdicts
            .iter()
            .fold(Validity::True, |acc, v| acc.and(v.valid)),
        checkers: verdicts,
        ops: counts,
        failover: failover(samples),
    };
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("results.json"), json + "\n").map_err(|e| e.to_string())?;
    let mut records: Vec<Record> = ops.into_iter().map(Record::Op).collect();
    records.extend(
        events
            .lock()
            .expect("events")
            .iter()
            .cloned()
            .map(Record::Nemesis),
    );
    std::fs::write(
        dir.join("report.html"),
        crate::report::render(&results, &records),
    )
    .map_err(|e| e.to_string())?;
    print_summary(&results);
    Ok((results.valid, dir))
}

fn print_summary(r: &Results) {
    for v in &r.checkers {
        let valid = match v.valid {
            Validity::True => "valid",
            Validity::False => "INVALID",
            Validity::Unknown => "unknown",
        };
        println!(
            "{:<24} {valid:<8} {}{}",
            v.checker,
            v.anomaly
                .as_deref()
                .map(|a| format!("[{a}] "))
                .unwrap_or_default(),
            v.detail.lines().next().unwrap_or("")
        );
    }
    println!(
        "ops: {} ok, {} fail, {} info; failover after leader kill: {} samples, median {} ms, p99 {} ms",
        r.ops.ok,
        r.ops.fail,
        r.ops.info,
        r.failover.samples_ms.len(),
        r.failover.median_ms.map_or("-".into(), |v| v.to_string()),
        r.failover.p99_ms.map_or("-".into(), |v| v.to_string())
    );
}

/// Median and p99 of the failover samples.
pub fn failover(mut samples: Vec<u64>) -> Failover {
    samples.sort_unstable();
    let pick = |q: f64| -> Option<u64> {
        if samples.is_empty() {
            return None;
        }
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        Some(samples[i])
    };
    Failover {
        median_ms: pick(0.5),
        p99_ms: pick(0.99),
        samples_ms: samples,
    }
}

/// `swarm init` on n1, the next managers join as managers and the rest as workers; waits
/// until every node is Ready and records the node ids.
fn form(db: &Db, managers: usize) -> Result<(), String> {
    let dirs: Vec<PathBuf> = db.nodes.iter().map(|n| n.dir.clone()).collect();
    let listen = format!("{}:4700", db.node(1).net.ip);
    let shoal = &db.shoal;
    testbed::cli(shoal, &dirs[0], &["swarm", "init"])?;
    let token = |role: &str| testbed::cli(shoal, &dirs[0], &["swarm", "join-token", "-q", role]);
    let (mtoken, wtoken) = (token("manager")?, token("worker")?);
    for (i, d) in dirs.iter().enumerate().skip(1) {
        let t = if i < managers { &mtoken } else { &wtoken };
        testbed::cli(shoal, d, &["swarm", "join", "--token", t.trim(), &listen])?;
    }
    let start = Instant::now();
    loop {
        let ready = db
            .node_list()
            .map(|l| l.iter().filter(|n| n["status"] == "Ready").count())
            .unwrap_or(0);
        if ready == db.nodes.len() {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "{ready} of {} nodes ready after 180 s",
                db.nodes.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for i in 1..=db.nodes.len() {
        let info = db.info(i).ok_or(format!("n{i} does not answer"))?;
        *db.node(i).id.lock().expect("id") = info.node_id;
    }
    // Every manager's replica runs and knows the leader.
    while !(1..=managers.min(db.nodes.len())).all(|i| {
        db.info(i)
            .is_some_and(|v| v.role == "manager" && !v.leader.is_empty())
    }) {
        if start.elapsed() > Duration::from_secs(180) {
            return Err("the managers did not all see a leader within 180 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// Heals every fault: partitions, netem, clocks, pauses, kills.
pub fn heal_all(db: &Db) {
    if let Err(e) = nemesis::heal_partition(db) {
        eprintln!("heal partition: {e}");
    }
    let all: Vec<usize> = (1..=db.nodes.len()).collect();
    nemesis::heal_netem(db, &all);
    for &i in &all {
        let _ = nemesis::pause(db, i, false);
        if let Err(e) = nemesis::restart(db, i) {
            eprintln!("restart n{i}: {e}");
        }
        let _ = nemesis::set_clock(db, i, 0, 1.0);
    }
}

/// Sleeps `d` unless `stop` is set first; true if it slept the whole time.
fn nap(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
    true
}

/// The nemesis: quiet, then one fault at a time (start, hold 5–15 s, heal, quiet 3–8 s) until
/// `stop`; the last fault is healed before it returns.
fn nemesis_loop(
    db: &Db,
    rec: &Recorder,
    names: &[String],
    seed: u64,
    stop: &AtomicBool,
    events: &Mutex<Vec<NemesisEvent>>,
    failovers: &Mutex<Vec<u64>>,
) {
    let mut rng = Rng::new(seed ^ 0x4E4E_5E51);
    if names.is_empty() {
        return;
    }
    let protected: BTreeSet<usize> = (1..=workload::KEY_NODES.min(db.nodes.len())).collect();
    if !nap(Duration::from_secs(5), stop) {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        let name = names[rng.below(names.len() as u64) as usize].as_str();
        let hold = Duration::from_millis(5_000 + rng.below(10_000));
        let quiet = Duration::from_millis(3_000 + rng.below(5_000));
        let start_ns = rec.now_ns();
        let (fault, label, detail) = start_fault(db, name, &mut rng, &protected);
        // A leader kill: how long until a write commits again.
        if let Some(Fault::Kill {
            nodes,
            leader: true,
        }) = &fault
        {
            let at = Instant::now();
            if let Some(d) =
                nemesis::failover_probe(db, nodes[0], at, hold.max(Duration::from_secs(30)))
            {
                failovers
                    .lock()
                    .expect("failovers")
                    .push(d.as_millis() as u64);
            }
        }
        nap(hold, stop);
        if let Some(f) = &fault {
            stop_fault(db, f);
        }
        let ev = NemesisEvent {
            name: label,
            detail,
            start_ns,
            end_ns: rec.now_ns(),
        };
        println!(
            "nemesis {:>7.1}s–{:>7.1}s {}: {}",
            ev.start_ns as f64 / 1e9,
            ev.end_ns as f64 / 1e9,
            ev.name,
            ev.detail
        );
        rec.write(&Record::Nemesis(ev.clone()));
        events.lock().expect("events").push(ev);
        nap(quiet, stop);
    }
}

/// Starts one fault of nemesis `name`: the fault to heal, its label and what it did.
fn start_fault(
    db: &Db,
    name: &str,
    rng: &mut Rng,
    protected: &BTreeSet<usize>,
) -> (Option<Fault>, String, String) {
    let n = db.nodes.len();
    let leader = db.leader();
    let minority = |rng: &mut Rng| -> Vec<usize> {
        let k = 1 + rng.below(((n - 1) / 2).max(1) as u64) as usize;
        let mut all: Vec<usize> = (1..=n).collect();
        for i in (1..all.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all.sort_unstable();
        all
    };
    match name {
        "partition" => {
            let shape = nemesis::PARTITIONS[rng.below(nemesis::PARTITIONS.len() as u64) as usize];
            let (g, detail) = nemesis::grudge(shape, n, leader, rng);
            match nemesis::partition(db, &g) {
                Ok(()) => (
                    Some(Fault::Partition(g)),
                    format!("partition-{shape}"),
                    detail,
                ),
                Err(e) => (Some(Fault::Partition(g)), format!("partition-{shape}"), e),
            }
        }
        "kill" => {
            let on_leader = rng.chance(0.5);
            let nodes = match (on_leader, leader) {
                (true, Some(l)) => vec![l],
                _ => minority(rng),
            };
            for &i in &nodes {
                nemesis::kill(db, i);
            }
            let was_leader = on_leader && leader.is_some();
            (
                Some(Fault::Kill {
                    nodes: nodes.clone(),
                    leader: was_leader,
                }),
                if was_leader { "kill-leader" } else { "kill" }.into(),
                format!("kill -9 {}", nemesis::names(&nodes)),
            )
        }
        "pause" => {
            let nodes = match (rng.chance(0.5), leader) {
                (true, Some(l)) => vec![l],
                _ => minority(rng),
            };
            let mut detail = format!("SIGSTOP {}", nemesis::names(&nodes));
            for &i in &nodes {
                if let Err(e) = nemesis::pause(db, i, true) {
                    detail.push_str(&format!(" ({e})"));
                }
            }
            (Some(Fault::Pause(nodes)), "pause".into(), detail)
        }
        "netem" => {
            let nodes: Vec<usize> = if rng.chance(0.5) {
                (1..=n).collect()
            } else {
                minority(rng)
            };
            let detail = nemesis::netem(db, &nodes, rng).unwrap_or_else(|e| e);
            (Some(Fault::Netem(nodes)), "netem".into(), detail)
        }
        "clock" => {
            let nodes = minority(rng);
            let mut detail = Vec::new();
            for &i in &nodes {
                let offset = (rng.below(240_000) as i64) - 120_000;
                let rate = [0.25, 0.5, 2.0, 4.0][rng.below(4) as usize];
                let r = nemesis::set_clock(db, i, offset, rate);
                detail.push(format!(
                    "n{i} {offset:+} ms x{rate}{}",
                    r.err().map(|e| format!(" ({e})")).unwrap_or_default()
                ));
            }
            (Some(Fault::Clock(nodes)), "clock".into(), detail.join(", "))
        }
        "membership" => {
            let detail = nemesis::churn(db, rng, protected).unwrap_or_else(|e| e);
            (Some(Fault::Membership), "membership".into(), detail)
        }
        other => (None, other.into(), "unknown nemesis".into()),
    }
}

fn stop_fault(db: &Db, f: &Fault) {
    match f {
        Fault::Partition(_) => {
            let _ = nemesis::heal_partition(db);
        }
        Fault::Kill { nodes, .. } => {
            for &i in nodes {
                if let Err(e) = nemesis::restart(db, i) {
                    eprintln!("restart n{i}: {e}");
                }
            }
        }
        Fault::Pause(nodes) => {
            for &i in nodes {
                let _ = nemesis::pause(db, i, false);
            }
        }
        Fault::Netem(nodes) => nemesis::heal_netem(db, nodes),
        Fault::Clock(nodes) => {
            for &i in nodes {
                let _ = nemesis::set_clock(db, i, 0, 1.0);
            }
        }
        Fault::Membership => {}
    }
}

/// After healing: within `within`, every manager agrees on one leader and one non-joint
/// configuration whose voters are the managers of the node list.
fn membership_agreement(db: &Db, within: Duration) -> Verdict {
    let start = Instant::now();
    loop {
        let last = match agreement(db) {
            Ok(detail) => {
                return Verdict {
                    checker: "membership".into(),
                    valid: Validity::True,
                    anomaly: None,
                    detail: format!(
                        "{detail}, agreed {:.1} s after healing",
                        start.elapsed().as_secs_f64()
                    ),
                    failing_key: None,
                }
            }
            Err(e) => e,
        };
        if start.elapsed() > within {
            return Verdict {
                checker: "membership".into(),
                valid: Validity::False,
                anomaly: Some("no-agreement".into()),
                detail: format!("after {} s: {last}", within.as_secs()),
                failing_key: None,
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn agreement(db: &Db) -> Result<String, String> {
    let managers = db.managers().ok_or("no manager answers the node list")?;
    let mut views = BTreeMap::new();
    for &i in &managers {
        let info = db.info(i).ok_or(format!("manager n{i} does not answer"))?;
        views.insert(i, info);
    }
    let leaders: BTreeSet<&str> = views.values().map(|v| v.leader.as_str()).collect();
    if leaders.len() != 1 || leaders.contains("") {
        return Err(format!("managers disagree on the leader: {leaders:?}"));
    }
    let configs: BTreeSet<(Vec<String>, Vec<String>)> = views
        .values()
        .map(|v| {
            let mut a = v.voters.clone();
            a.sort();
            let mut b = v.outgoing_voters.clone();
            b.sort();
            (a, b)
        })
        .collect();
    if configs.len() != 1 {
        return Err(format!(
            "managers disagree on the configuration: {configs:?}"
        ));
    }
    let (voters, outgoing) = configs.into_iter().next().unwrap_or_default();
    if !outgoing.is_empty() {
        return Err("the configuration is still joint".into());
    }
    let mut want: Vec<String> = managers
        .iter()
        .map(|&i| db.node(i).id.lock().expect("id").clone())
        .collect();
    want.sort();
    if voters != want {
        return Err(format!(
            "the voters {voters:?} are not the managers of the node list {want:?}"
        ));
    }
    Ok(format!(
        "one leader ({}), {} voters, not joint",
        leaders.into_iter().next().unwrap_or_default(),
        voters.len()
    ))
}

/// Reads the services, waits for them to run their replicas, and counts running tasks and
/// task processes per slot.
fn final_services(db: &Db, within: Duration) -> ServicesSeen {
    let mut seen = ServicesSeen {
        deadline_s: within.as_secs(),
        ..Default::default()
    };
    let start = Instant::now();
    loop {
        let Some(l) = db.leader() else {
            if start.elapsed() > within {
                seen.unreadable = Some("no leader".into());
                return seen;
            }
            std::thread::sleep(Duration::from_millis(500));
            continue;
        };
        let socket = db.node(l).socket();
        match call(&socket, "GET", "/v1/services", None, OP_TIMEOUT) {
            Ok(Response::Services { services }) => {
                seen.listed = services
                    .iter()
                    .map(|s| (s.spec.name.clone(), s.id.clone()))
                    .collect();
                seen.replicas = services
                    .iter()
                    .map(|s| (s.spec.name.clone(), (s.desired, s.running)))
                    .collect();
                seen.unreadable = None;
                let converged = services.iter().all(|s| s.desired == s.running);
                if converged || start.elapsed() > within {
                    seen.converged = converged;
                    break;
                }
            }
            other => {
                seen.unreadable = Some(format!("service ls: {other:?}"));
                if start.elapsed() > within {
                    return seen;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Give the workers a moment to stop what they were told to stop, then count.
    std::thread::sleep(Duration::from_secs(3));
    if let Some(l) = db.leader() {
        let names: Vec<String> = seen.listed.iter().map(|(n, _)| n.clone()).collect();
        if let Ok(Response::Tasks { tasks }) = call(
            &db.node(l).socket(),
            "POST",
            "/v1/tasks",
            Some(&json!({ "services": names })),
            OP_TIMEOUT,
        ) {
            for t in tasks.iter().filter(|t| t.state == "running") {
                *seen
                    .running_per_slot
                    .entry((t.service_name.clone(), t.slot))
                    .or_default() += 1;
            }
        }
    }
    seen.processes_per_slot = task_processes();
    seen
}

/// Task processes (`sleep 100000` with the task's environment) per (service, slot), read
/// from /proc: inside the suite's PID namespace there are only the test's processes.
pub fn task_processes() -> BTreeMap<(String, u64), u64> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Ok(cmd) = std::fs::read(p.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_task = args.len() >= 2 && args[0].ends_with(b"sleep") && args[1] == b"100000";
        if !is_task {
            continue;
        }
        let Ok(env) = std::fs::read(p.join("environ")) else {
            continue;
        };
        let mut svc = None;
        let mut slot = None;
        for kv in env.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some(v) = kv.strip_prefix("SHOAL_SERVICE_NAME=") {
                svc = Some(v.to_string());
            } else if let Some(v) = kv.strip_prefix("SHOAL_TASK_SLOT=") {
                slot = v.parse::<u64>().ok();
            }
        }
        if let (Some(s), Some(n)) = (svc, slot) {
            *out.entry((s, n)).or_default() += 1;
        }
    }
    out
}

/// A demote that would cost the quorum must be refused: kills just enough managers other
/// than the leader that demoting one more would leave too few reachable, asks for it, and
/// checks that it failed and that the node is still a manager once everything is back.
fn unsafe_demote(db: &Db) -> Verdict {
    let mk = |valid, anomaly: Option<&str>, detail: String| Verdict {
        checker: "unsafe-demote".into(),
        valid,
        anomaly: anomaly.map(str::to_string),
        detail,
        failing_key: None,
    };
    let (Some(managers), Some(leader)) = (db.managers(), db.await_leader(Duration::from_secs(30)))
    else {
        return mk(
            Validity::Unknown,
            Some("no-leader"),
            "no leader to ask".into(),
        );
    };
    let m = managers.len();
    if m < 3 {
        return mk(Validity::True, None, format!("skipped: {m} managers"));
    }
    let others: Vec<usize> = managers.iter().copied().filter(|&i| i != leader).collect();
    // After demoting one, m-1 voters remain and need (m-1)/2+1 reachable.
    let down = (m - 1) - (m - 1) / 2;
    let (killed, rest) = others.split_at(down.min(others.len() - 1));
    let target = rest[0];
    for &i in killed {
        nemesis::kill(db, i);
    }
    // Let gossip see them gone (the check counts reachable managers).
    std::thread::sleep(Duration::from_secs(6));
    let answer = call(
        &db.node(leader).socket(),
        "POST",
        &format!("/v1/nodes/n{target}/demote"),
        None,
        OP_TIMEOUT,
    );
    for &i in killed {
        let _ = nemesis::restart(db, i);
    }
    let after = {
        let start = Instant::now();
        loop {
            if let Some(ms) = db.managers() {
                break Some(ms);
            }
            if start.elapsed() > Duration::from_secs(60) {
                break None;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let still = after.as_ref().is_some_and(|ms| ms.contains(&target));
    let what = format!(
        "demote n{target} with {} of {m} managers down ({})",
        killed.len(),
        nemesis::names(killed)
    );
    match answer {
        Ok(_) => mk(
            Validity::False,
            Some("unsafe-demote-accepted"),
            format!("{what}: accepted"),
        ),
        Err(e) if still => mk(
            Validity::True,
            None,
            format!(
                "{what}: refused ({}); n{target} is still a manager",
                e.message()
            ),
        ),
        Err(e) if after.is_none() => mk(
            Validity::Unknown,
            Some("no-final-read"),
            format!(
                "{what}: refused ({}), but no node list could be read after",
                e.message()
            ),
        ),
        Err(e) => mk(
            Validity::False,
            Some("unsafe-demote-applied"),
            format!(
                "{what}: answered {:?}, yet n{target} is no longer a manager",
                e.message()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(stamp(0), "1970-01-01T00-00-00Z");
        assert_eq!(stamp(951_782_400), "2000-02-29T00-00-00Z");
        assert_eq!(stamp(1_796_613_669), "2026-12-07T03-21-09Z");
    }

    #[test]
    fn failover_percentiles() {
        let f = failover(vec![300, 100, 200]);
        assert_eq!(f.median_ms, Some(200));
        assert_eq!(f.p99_ms, Some(300));
        assert_eq!(failover(vec![]).median_ms, None);
    }
}
