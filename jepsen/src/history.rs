//! What a run records: every client operation with its invocation and completion times and
//! outcome (`ok`, `fail` or `info` for unknown, as in Jepsen), every nemesis interval, and the
//! checkers' verdicts. Written as JSON lines (`history.jsonl`) and `results.json`.

use serde::{Deserialize, Serialize};

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// It took effect (a read: it returned this value).
    Ok,
    /// It definitely did not take effect.
    Fail,
    /// Unknown: it may or may not have taken effect (timeout, lost connection, ambiguous error).
    Info,
}

/// One client operation, recorded when it completed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// The client (a Jepsen "process"): one thread issuing one operation at a time.
    pub process: u64,
    /// The workload: `register`, `services` or `membership`.
    pub workload: String,
    /// The function: `read`, `write`, `cas`; `create`, `scale`, `remove`; `promote`, …
    pub f: String,
    /// The key (register: `n1/r7`; services: the service name).
    #[serde(default)]
    pub key: Option<String>,
    /// The value written (write, cas: the new value; scale: the replicas).
    #[serde(default)]
    pub value: Option<u64>,
    /// cas: the value the register was read to hold before (None: absent).
    #[serde(default)]
    pub expected: Option<u64>,
    /// read: the value read (None: absent).
    #[serde(default)]
    pub result: Option<u64>,
    /// The node (1-based) whose agent the client asked.
    pub node: usize,
    /// Invocation, nanoseconds since the run began.
    pub start_ns: u64,
    /// Completion, nanoseconds since the run began.
    pub end_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The error, for `fail` and `info`.
    #[serde(default)]
    pub error: Option<String>,
}

/// One fault, from when the nemesis started it to when it healed it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NemesisEvent {
    /// Which nemesis: `partition-halves`, `kill`, `pause`, `netem`, `clock`, …
    pub name: String,
    /// What it did (`n1 n2 | n3 n4 n5`, `kill n3`, …).
    pub detail: String,
    /// Started, nanoseconds since the run began.
    pub start_ns: u64,
    /// Healed, nanoseconds since the run began.
    pub end_ns: u64,
}

/// One line of `history.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Record {
    /// A client operation.
    Op(Op),
    /// A fault interval.
    Nemesis(NemesisEvent),
}

/// A checker's verdict: valid, invalid, or unknown (it could not decide).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// Valid.
    True,
    /// An anomaly was found.
    False,
    /// Neither proven nor refuted (a search budget ran out, a deadline passed with no answer).
    Unknown,
}

impl Validity {
    /// The worse of two verdicts: false over unknown over true.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::False, _) | (_, Validity::False) => Validity::False,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            _ => Validity::True,
        }
    }

    /// The exit status it means: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Validity::True => 0,
            Validity::False => 1,
            Validity::Unknown => 2,
        }
    }
}

impl Serialize for Validity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::True => s.serialize_bool(true),
            Validity::False => s.serialize_bool(false),
            Validity::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(Validity::True),
            serde_json::Value::Bool(false) => Ok(Validity::False),
            serde_json::Value::String(s) if s == "unknown" => Ok(Validity::Unknown),
            other => Err(serde::de::Error::custom(format!(
                "valid must be true, false or \"unknown\", not {other}"
            ))),
        }
    }
}

/// One checker's verdict and what it found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    /// The checker: `linearizable-registers`, `service-set`, `convergence`, `membership`,
    /// `unsafe-demote`, `no-panics`, `one-task-per-slot`.
    pub checker: String,
    /// Its verdict.
    pub valid: Validity,
    /// The anomaly's name when invalid (`nonlinearizable-read`, `lost-create`, …), or why
    /// it is unknown.
    #[serde(default)]
    pub anomaly: Option<String>,
    /// A sentence or a few lines a person can read: what was checked, what was found.
    pub detail: String,
    /// For a register failure: the smallest failing key (its operations are in the history).
    #[serde(default)]
    pub failing_key: Option<String>,
}

/// Failover after a leader was killed: how long until a new leader committed a write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Failover {
    /// Every measurement, milliseconds.
    pub samples_ms: Vec<u64>,
    /// Their median.
    pub median_ms: Option<u64>,
    /// Their 99th percentile.
    pub p99_ms: Option<u64>,
}

/// `results.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Results {
    /// The test's name (the run directory's parent).
    pub test: String,
    /// The seed of the schedule.
    pub seed: u64,
    /// Nodes, managers at the start.
    pub nodes: usize,
    /// Managers at the start.
    pub managers: usize,
    /// The run's length, seconds, before the final phase.
    pub time_s: u64,
    /// The nemeses in use.
    pub nemeses: Vec<String>,
    /// The workloads in use.
    pub workloads: Vec<String>,
    /// All checkers' verdicts together.
    pub valid: Validity,
    /// Each checker's.
    pub checkers: Vec<Verdict>,
    /// Operations by outcome: ok, fail, info.
    pub ops: OpCounts,
    /// Failover after leader kills.
    pub failover: Failover,
}

/// Operations by outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpCounts {
    /// Completed.
    pub ok: u64,
    /// Definitely failed.
    pub fail: u64,
    /// Unknown.
    pub info: u64,
}
