//! The cluster under test: one agent per node of the test network, what the suite knows of
//! each (its node id, whether it runs or is paused), and calls to an agent's API with a
//! timeout whose outcome is sorted into ok, definite failure and unknown.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_agent::api::{InfoView, Response};
use shoal_agent::client::{self, ClientError};

use crate::testbed::{Agent, NodeNet};

/// How long a client waits for an answer before the outcome is unknown. The agents wait up to
/// 10 s for a commit and 12 s for a forwarded request.
pub const OP_TIMEOUT: Duration = Duration::from_secs(15);

/// One node of the test.
pub struct Node {
    /// Its place on the network.
    pub net: NodeNet,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its log (appended to across restarts).
    pub log: PathBuf,
    /// The agent, while it runs.
    pub agent: Mutex<Option<Agent>>,
    /// Its node id once it joined (a node removed and joined again gets a new one).
    pub id: Mutex<String>,
    /// SIGSTOPped by the pause nemesis.
    pub paused: Mutex<bool>,
    /// Packet faults in force.
    pub netem: Mutex<Option<crate::netem::Installed>>,
}

impl Node {
    /// Its control socket (the file stays when the agent dies: connecting then fails).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shoal.sock")
    }

    /// Its hostname, which names it in the API.
    pub fn name(&self) -> String {
        format!("n{}", self.net.index)
    }
}

/// The cluster under test.
pub struct Db {
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// Nodes in order (index 0 is `n1`).
    pub nodes: Vec<Node>,
}

/// How a call ended when it did not answer a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// Definitely not done: the agent refused it, or could not be reached at all.
    Fail(String),
    /// May or may not have been done: a timeout, a lost connection, an ambiguous refusal.
    Unknown(String),
}

impl CallError {
    /// The message.
    pub fn message(&self) -> &str {
        match self {
            CallError::Fail(m) | CallError::Unknown(m) => m,
        }
    }
}

/// Refusals that mean the write was never proposed (or was proposed and rejected by the state
/// machine), so it certainly did not take effect. Every other refusal of a write is unknown.
const DEFINITE: &[&str] = &[
    "out of sequence",
    "not a swarm manager",
    "no such",
    "not found",
    "invalid",
    "already exists",
    "loss of quorum",
    "last manager",
    "must be demoted",
    "not down",
];

/// Classifies a refusal of a write.
pub fn classify_refusal(message: &str) -> CallError {
    let lower = message.to_ascii_lowercase();
    if DEFINITE.iter().any(|d| lower.contains(d)) {
        CallError::Fail(message.to_string())
    } else {
        CallError::Unknown(message.to_string())
    }
}

/// Calls `method path` on the agent at `socket`: its answer, or why there is none. A refusal
/// (`Response::Error`) is a definite failure of a read; of a write, see [`classify_refusal`].
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<Response, CallError> {
    match client::call_within(socket, method, path, body, timeout) {
        Ok(Response::Error { message }) => {
            if method == "GET" {
                Err(CallError::Fail(message))
            } else {
                Err(classify_refusal(&message))
            }
        }
        Ok(r) => Ok(r),
        // Nothing was sent: the agent is down.
        Err(e @ ClientError::Connect { .. }) | Err(e @ ClientError::Request(_)) => {
            Err(CallError::Fail(e.to_string()))
        }
        Err(e) => Err(CallError::Unknown(e.to_string())),
    }
}

impl Db {
    /// The node at 1-based `index`.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index - 1]
    }

    /// The node whose id is `id`, 1-based.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes
            .iter()
            .position(|n| !id.is_empty() && *n.id.lock().expect("id") == id)
            .map(|i| i + 1)
    }

    /// Is the agent of node `index` running and not paused?
    pub fn up(&self, index: usize) -> bool {
        let n = self.node(index);
        n.agent.lock().expect("agent").is_some() && !*n.paused.lock().expect("paused")
    }

    /// What node `index`'s agent says of itself (its local view), if it answers in 2 s.
    pub fn info(&self, index: usize) -> Option<InfoView> {
        if !self.up(index) {
            return None;
        }
        match call(
            &self.node(index).socket(),
            "GET",
            "/v1/info",
            None,
            Duration::from_secs(2),
        ) {
            Ok(Response::Info(i)) => Some(i),
            _ => None,
        }
    }

    /// The leader most nodes that answer agree on in the highest term they report, 1-based.
    pub fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, String)> = None;
        for i in 1..=self.nodes.len() {
            if let Some(info) = self.info(i) {
                if info.role == "manager"
                    && !info.leader.is_empty()
                    && best.as_ref().is_none_or(|(t, _)| info.term > *t)
                {
                    best = Some((info.term, info.leader));
                }
            }
        }
        best.and_then(|(_, id)| self.index_of(&id))
    }

    /// Waits up to `within` for a leader.
    pub fn await_leader(&self, within: Duration) -> Option<usize> {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader() {
                return Some(l);
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The managers according to the node list of a manager that answers (linearizable), as
    /// 1-based indexes.
    pub fn managers(&self) -> Option<Vec<usize>> {
        let nodes = self.node_list()?;
        let mut out: Vec<usize> = nodes
            .iter()
            .filter(|n| n["role"] == "manager")
            .filter_map(|n| n["id"].as_str().and_then(|id| self.index_of(id)))
            .collect();
        out.sort_unstable();
        Some(out)
    }

    /// `node ls` from the first manager that answers, as JSON values.
    pub fn node_list(&self) -> Option<Vec<Value>> {
        for i in 1..=self.nodes.len() {
            if !self.up(i) {
                continue;
            }
            if let Ok(Response::Nodes { nodes, .. }) = call(
                &self.node(i).socket(),
                "GET",
                "/v1/nodes",
                None,
                Duration::from_secs(5),
            ) {
                return serde_json::to_value(nodes)
                    .ok()
                    .and_then(|v| v.as_array().cloned());
            }
        }
        None
    }
}
