//! The workloads: clients that each issue one operation at a time against one node's agent,
//! recording every operation with its outcome. Each client draws its operations from its own
//! generator seeded from the run's seed, so the same seed asks the same operations.
//!
//! * `register`: node labels as versioned registers. Key `r<k>` lives on node `n<1 + k % 3>`
//!   (nodes the membership nemesis never removes); writes are `node update --label-add`,
//!   compare-and-set reads the node (linearizable) and updates it only at the version read, so
//!   a success means the label still held the value read; reads are linearizable node
//!   inspects. The clients all move to a new key every [`KEY_PERIOD`], each making at most
//!   [`OPS_PER_KEY`] operations on it.
//! * `services`: creates services with unique names, scales them (at the version read) and
//!   removes them; the final check wants every acknowledged create present, every
//!   acknowledged remove absent, and the replicas running.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_agent::api::Response;
use shoal_sim::rng::Rng;

use crate::db::{call, CallError, Db, OP_TIMEOUT};
use crate::history::{Op, Outcome};

/// Most operations one client makes on a key.
pub const OPS_PER_KEY: u64 = 30;

/// The register labels, spread over the key nodes (a node holds at most 64 labels).
pub const KEY_SLOTS: u64 = 45;

/// How long the clients work on one key before they all move on to the next.
pub const KEY_PERIOD: Duration = Duration::from_secs(1);

/// Register keys live on these nodes (1-based; fewer with fewer nodes).
pub const KEY_NODES: usize = 3;

/// Most services alive at once.
pub const MAX_SERVICES: usize = 6;

/// The recorder: the run's start, the operations so far, and the history file as it grows.
pub struct Recorder {
    /// When the run began.
    pub start: Instant,
    /// Every operation, in completion order.
    pub ops: Mutex<Vec<Op>>,
    file: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
}

impl Recorder {
    /// A recorder writing history lines to `file`.
    pub fn new(file: std::fs::File) -> Recorder {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            file: Mutex::new(Some(std::io::BufWriter::new(file))),
        }
    }

    /// Nanoseconds since the run began.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one history line.
    pub fn write(&self, record: &crate::history::Record) {
        use std::io::Write;
        if let Some(f) = self.file.lock().expect("history").as_mut() {
            if let Ok(line) = serde_json::to_string(record) {
                let _ = writeln!(f, "{line}");
            }
        }
    }

    /// Records a completed operation.
    pub fn op(&self, op: Op) {
        self.write(&crate::history::Record::Op(op.clone()));
        self.ops.lock().expect("ops").push(op);
    }

    /// Flushes the history file.
    pub fn flush(&self) {
        use std::io::Write;
        if let Some(f) = self.file.lock().expect("history").as_mut() {
            let _ = f.flush();
        }
    }
}

/// A client's view of where to send requests: its node, and the next one when that one is
/// down or no longer a manager.
struct Target {
    node: usize,
    n: usize,
}

impl Target {
    fn next(&mut self) {
        self.node = self.node % self.n + 1;
    }

    /// Moves on to the next node after an error that says this one cannot serve: down, not
    /// a manager, or not answering in time.
    fn after(&mut self, e: &CallError) {
        let m = e.message();
        if m.contains("not a swarm manager")
            || m.contains("connect")
            || outcome_of(e) == Outcome::Info
        {
            self.next();
        }
    }
}

/// An operation just invoked on `key`: ok until its answer says otherwise.
fn begun(process: u64, workload: &str, f: &str, key: String, node: usize, start_ns: u64) -> Op {
    Op {
        process,
        workload: workload.into(),
        f: f.into(),
        key: Some(key),
        value: None,
        expected: None,
        result: None,
        node,
        start_ns,
        end_ns: 0,
        outcome: Outcome::Ok,
        error: None,
    }
}

fn outcome_of(e: &CallError) -> Outcome {
    match e {
        CallError::Fail(_) => Outcome::Fail,
        CallError::Unknown(_) => Outcome::Info,
    }
}

/// One register client: runs until `stop`.
pub fn register_client(db: &Db, rec: &Recorder, process: u64, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed ^ process.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let n = db.nodes.len();
    // Clients start spread over the first managers and come back to their node now and then
    // after a fault moved them elsewhere.
    let home = (process as usize % KEY_NODES.min(n)) + 1;
    let mut target = Target { node: home, n };
    let key_nodes = KEY_NODES.min(n);
    let mut count = 0u64;
    let (mut key_now, mut on_key) = (u64::MAX, 0u64);
    while !stop.load(Ordering::Relaxed) {
        // Every client works on the same key at the same time (the key changes every
        // KEY_PERIOD), at most OPS_PER_KEY operations each, so that the keys' histories stay
        // concurrent yet small enough to check.
        let k = rec.start.elapsed().as_millis() as u64 / KEY_PERIOD.as_millis() as u64;
        if k != key_now {
            (key_now, on_key) = (k, 0);
        }
        if on_key >= OPS_PER_KEY {
            let next = KEY_PERIOD * (k as u32 + 1);
            std::thread::sleep(next.saturating_sub(rec.start.elapsed()).min(KEY_PERIOD));
            continue;
        }
        on_key += 1;
        count += 1;
        if count.is_multiple_of(100) {
            target.node = home;
        }
        // A node holds at most 64 labels: the registers are KEY_SLOTS labels used in turn, a
        // key's history going on where it left off KEY_SLOTS periods before.
        let slot = k % KEY_SLOTS;
        let owner = 1 + (slot as usize % key_nodes);
        let key = format!("r{slot}");
        let f = match rng.below(10) {
            0..=3 => "read",
            4..=6 => "write",
            _ => "cas",
        };
        // Every write writes a value of its own, so that a read names the write it saw.
        let value = (process + 1) * 1_000_000_000 + count;
        let node = target.node;
        let socket = db.node(node).socket();
        let start_ns = rec.now_ns();
        let mut op = begun(
            process,
            "register",
            f,
            format!("n{owner}/{key}"),
            node,
            start_ns,
        );
        let node_path = format!("/v1/nodes/n{owner}");
        let update_path = format!("/v1/nodes/n{owner}/update");
        let read = |socket: &std::path::Path| -> Result<(u64, Option<u64>), CallError> {
            match call(socket, "GET", &node_path, None, OP_TIMEOUT)? {
                Response::Node { node, .. } => {
                    let v = match node.labels.get(&key) {
                        None => None,
                        Some(s) => Some(s.parse::<u64>().map_err(|_| {
                            CallError::Fail(format!("label {key}={s} is not a number"))
                        })?),
                    };
                    Ok((node.version, v))
                }
                other => Err(CallError::Fail(format!("unexpected answer {other:?}"))),
            }
        };
        let result: Result<(), CallError> = match f {
            "read" => read(&socket).map(|(_, v)| op.result = v),
            "write" => {
                op.value = Some(value);
                let body = json!({"label_add": [format!("{key}={value}")]});
                call(&socket, "POST", &update_path, Some(&body), OP_TIMEOUT).map(|_| ())
            }
            _ => {
                op.value = Some(value);
                match read(&socket) {
                    Ok((version, current)) => {
                        op.expected = current;
                        let body = json!({
                            "label_add": [format!("{key}={value}")],
                            "version": version,
                        });
                        call(&socket, "POST", &update_path, Some(&body), OP_TIMEOUT).map(|_| ())
                    }
                    Err(e) => Err(CallError::Fail(format!(
                        "the read before the compare-and-set failed: {}",
                        e.message()
                    ))),
                }
            }
        };
        op.end_ns = rec.now_ns();
        if let Err(e) = result {
            op.outcome = outcome_of(&e);
            op.error = Some(e.message().to_string());
            target.after(&e);
        }
        rec.op(op);
        std::thread::sleep(Duration::from_millis(rng.below(20)));
    }
}

/// The services client: runs until `stop`. Names are `s<process>-<i>`, never reused.
pub fn services_client(db: &Db, rec: &Recorder, process: u64, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng::new(seed ^ 0x5E41_CE00 ^ process);
    let n = db.nodes.len();
    let mut target = Target { node: 1, n };
    // Services that may exist (acknowledged or unknown creates not removed for sure).
    let mut live: Vec<String> = Vec::new();
    let mut made = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let f = match rng.below(10) {
            _ if live.is_empty() => "create",
            0..=3 if live.len() < MAX_SERVICES => "create",
            0..=5 => "scale",
            _ => "remove",
        };
        let node = target.node;
        let socket = db.node(node).socket();
        let start_ns = rec.now_ns();
        let (name, replicas) = match f {
            "create" => {
                made += 1;
                (format!("s{process}-{made}"), 1 + rng.below(3))
            }
            _ => (
                live[rng.below(live.len() as u64) as usize].clone(),
                rng.below(4),
            ),
        };
        let mut op = begun(process, "services", f, name.clone(), node, start_ns);
        op.value = (f != "remove").then_some(replicas);
        let result: Result<(), CallError> = match f {
            "create" => {
                let spec = service_spec(&name, replicas);
                call(
                    &socket,
                    "POST",
                    "/v1/services/create",
                    Some(&json!({ "spec": spec })),
                    OP_TIMEOUT,
                )
                .map(|_| ())
            }
            "scale" => scale(&socket, &name, replicas),
            _ => call(
                &socket,
                "DELETE",
                &format!("/v1/services/{name}"),
                None,
                OP_TIMEOUT,
            )
            .map(|_| ()),
        };
        op.end_ns = rec.now_ns();
        match &result {
            Ok(()) => {
                if f == "create" {
                    live.push(name.clone());
                } else if f == "remove" {
                    live.retain(|s| *s != name);
                }
            }
            Err(e) => {
                op.outcome = outcome_of(e);
                op.error = Some(e.message().to_string());
                if f == "create" && op.outcome == Outcome::Info {
                    live.push(name.clone());
                }
                if f == "remove" && e.message().contains("not found") {
                    live.retain(|s| *s != name);
                }
                target.after(e);
            }
        }
        rec.op(op);
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
    }
}

/// A process service of `replicas` tasks that sleep.
pub fn service_spec(name: &str, replicas: u64) -> shoal_cluster::ServiceSpec {
    let mut spec = shoal_cluster::ServiceSpec::new(name, "sleep", replicas);
    spec.task.runtime = shoal_cluster::Runtime::Process;
    spec.task.args = vec!["100000".into()];
    spec
}

/// Reads the service and updates its replicas at the version read.
fn scale(socket: &std::path::Path, name: &str, replicas: u64) -> Result<(), CallError> {
    let view = match call(
        socket,
        "GET",
        &format!("/v1/services/{name}"),
        None,
        OP_TIMEOUT,
    ) {
        Ok(Response::Service { service }) => service,
        Ok(other) => return Err(CallError::Fail(format!("unexpected answer {other:?}"))),
        Err(e) => {
            return Err(CallError::Fail(format!(
                "the read before the scale failed: {}",
                e.message()
            )))
        }
    };
    let mut spec = view.spec;
    spec.mode = shoal_cluster::ServiceMode::Replicated { replicas };
    call(
        socket,
        "POST",
        &format!("/v1/services/{name}/update"),
        Some(&json!({"version": view.version, "spec": spec})),
        OP_TIMEOUT,
    )
    .map(|_| ())
}

/// Counts operations by outcome.
pub fn counts(ops: &[Op]) -> BTreeMap<&'static str, u64> {
    let mut m = BTreeMap::new();
    for o in ops {
        let k = match o.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        *m.entry(k).or_default() += 1;
    }
    m
}
