//! What agents send each other besides SWIM packets: Raft messages (postcard, behind a version
//! byte) and control requests (JSON, behind a tag byte that tells them from the PKI's join and
//! renewal requests on the same request channel).

use serde::{Deserialize, Serialize};
use shoal_cluster::{NodeDescription, NodeId, RequestId, Task, TaskId, TaskReport, TaskSpec};

use crate::api::{Request, Response};

/// Version byte of an encoded Raft message.
const RAFT_VERSION: u8 = 1;
/// First byte of a control request (PKI requests never start with it: their postcard enum tag
/// is 0 or 1).
pub const CONTROL_TAG: u8 = 0xC7;

/// Encodes a Raft message for the transport.
pub fn encode_raft(m: &shoal_raft::Message) -> Vec<u8> {
    postcard::to_extend(m, vec![RAFT_VERSION]).expect("raft messages serialise")
}

/// Decodes a Raft message; the transport already bounded its size.
pub fn decode_raft(bytes: &[u8]) -> Result<shoal_raft::Message, String> {
    let (&v, body) = bytes.split_first().ok_or("empty raft message")?;
    if v != RAFT_VERSION {
        return Err(format!("unknown raft message version {v}"));
    }
    let (m, rest) = postcard::take_from_bytes::<shoal_raft::Message>(body)
        .map_err(|e| format!("malformed raft message: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after a raft message".into());
    }
    Ok(m)
}

/// On whose behalf a forwarded request is made: what the receiver authorizes. A manager that
/// forwards a request passes on the original requester's origin, never its own role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// An operator at a manager's control socket: may view and change the cluster.
    Operator,
    /// A node acting for itself (a worker's own task status and assignments, later): may not
    /// view or change cluster state.
    Node(NodeId),
}

impl Origin {
    /// Whether this origin may make `req`: operators anything; a node nothing of the control
    /// API (its own registration and leave travel as their own requests).
    pub fn may(&self, _req: &Request) -> bool {
        matches!(self, Origin::Operator)
    }
}

/// A request from one agent to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AgentRequest {
    /// A CLI request passed by a manager to another manager (which may forward it to the
    /// leader). Accepted only over a manager's certificate.
    Control {
        /// The request.
        req: Request,
        /// Its id, so that a retry is applied once.
        rid: Option<RequestId>,
        /// Who asked.
        origin: Origin,
    },
    /// A CLI request forwarded by a manager to the leader (never forwarded again). Accepted only
    /// over a manager's certificate.
    ToLeader {
        /// The request.
        req: Request,
        /// Its id.
        rid: Option<RequestId>,
        /// Who asked.
        origin: Origin,
    },
    /// A node that just joined (or restarted) tells the managers about itself. Its id and role
    /// come from its certificate, never from this message.
    Register {
        /// What it reports.
        description: NodeDescription,
        /// Where it is reached.
        addr: String,
        /// Its `--label`s (applied on first registration only).
        labels: Vec<(String, String)>,
    },
    /// A manager asks the leader to record a node it is admitting (before it signs the node's
    /// certificate). Accepted over a manager's certificate only.
    Admit {
        /// The new node's id.
        id: NodeId,
        /// Its hostname (from its join request).
        hostname: String,
        /// Where its join came from (corrected when it registers).
        addr: String,
        /// The role of the token that matched.
        role: shoal_cluster::Role,
        /// The token's secret (hex), checked again against the committed tokens.
        secret: String,
    },
    /// Where the nodes are, which are managers, and which ids are removed: what a worker needs
    /// to send its traffic to the right places and to deny removed nodes. Answered by any
    /// manager from its state, as a JSON [`Directory`].
    Directory,
    /// Is `node` in the leader's latest Raft configuration? Answered `true`/`false` by the
    /// leader only (a node removed by a joint change asks before stopping its replica).
    IsMember {
        /// The node.
        node: NodeId,
    },
    /// Are you there? Answered `pong` by every node at once: the leader's own check of a
    /// node that membership suspects.
    Ping,
    /// A node asks for its tasks: the whole set when `seq` is not the last answer's sequence
    /// number of `session` on this manager, else what changed since, waiting up to `wait_ms`
    /// (at most 5 s) for a change. Answered by any manager, for the asking node only.
    Assignments {
        /// Chosen by the node when it starts asking.
        session: u64,
        /// The last answer's sequence number it applied (0 = none).
        seq: u64,
        /// How long to wait for a change before answering with nothing new.
        wait_ms: u64,
    },
    /// A node reports its tasks' observed statuses (latest per task). Recorded for the asking
    /// node only; a manager passes them to the leader, which commits them in batches.
    TaskStatus {
        /// The statuses.
        reports: Vec<TaskReport>,
    },
    /// A manager passes a node's reports to the leader. Accepted over a manager's certificate
    /// only.
    ForwardTaskStatus {
        /// The node that reported.
        node: NodeId,
        /// The statuses.
        reports: Vec<TaskReport>,
    },
    /// A manager asks a node for the output of some of its tasks (`service logs`). Accepted
    /// over a manager's certificate only (logs may hold anything a task printed).
    TaskLogs {
        /// The tasks, with what the asker has seen of each already.
        tasks: Vec<(TaskId, LogCursor)>,
        /// Only the last N lines of each task (first call).
        tail: Option<usize>,
    },
    /// `node` is leaving the swarm: record it as Down ("node left the swarm") right away
    /// instead of waiting for membership to notice. Accepted from the node itself, or from a
    /// Raft voter that forwards it to the leader.
    Leaving {
        /// The node.
        node: NodeId,
    },
    /// Is `node`'s removal from the Raft group committed? Answered `true`/`false` by the leader
    /// only, after a read barrier: its committed state records the node as a worker and its
    /// configuration excludes it. A demoted manager deletes its retired log only then.
    RemovalCommitted {
        /// The node.
        node: NodeId,
    },
}

/// One task assigned to a node, with what it needs to run it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The task (desired state, observed status, slot, spec version).
    pub task: Task,
    /// Its service's name (log prefixes, task names such as `web.1`).
    pub service_name: String,
    /// The task's spec, at the task's spec version; `None` once the service is removed (the
    /// task is then only to be stopped).
    pub spec: Option<TaskSpec>,
    /// The secrets and configs the task gets, with their data: sent only while the task is
    /// to run (never for history), and only to the task's node.
    pub files: Vec<TaskFile>,
    /// A secret or config the spec names that no longer exists (the task cannot start).
    pub missing: String,
}

/// A secret or config as a task's node gets it: where the file goes and what it holds.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// What the spec says of it (kind, name, target, owner, mode).
    pub reference: shoal_cluster::SecretRef,
    /// The content.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for TaskFile {
    /// Never the data: a secret must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("reference", &self.reference)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// The answer to [`AgentRequest::Assignments`]: the node's whole set (`full`), or what changed
/// since the sequence number it acknowledged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignments {
    /// The node's session, as it sent it.
    pub session: u64,
    /// This answer's sequence number: the node sends it back to get the next increment.
    pub seq: u64,
    /// Whether `tasks` is the whole set (every task not listed is no longer the node's).
    pub full: bool,
    /// New or changed tasks (or all of them).
    pub tasks: Vec<Assignment>,
    /// Tasks that are gone (deleted by the reaper) since the last answer.
    pub removed: Vec<TaskId>,
    /// The Raft index the answering manager's state is at: a node that has seen a later state
    /// (from another manager) ignores an older one rather than stop tasks it does not list yet.
    #[serde(default)]
    pub index: u64,
    /// Every service's endpoints (the routing mesh's and the name server's table), when it
    /// changed since the last answer (always with a whole set); `None`: as before.
    #[serde(default)]
    pub endpoints: Option<Vec<shoal_cluster::ServiceEndpoints>>,
}

/// What a reader has seen of a task's output: lines up to `timestamp_ms`, and how many of the
/// lines stamped exactly `timestamp_ms` (several lines can share a millisecond).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogCursor {
    /// The newest timestamp seen.
    pub timestamp_ms: u64,
    /// Lines seen with exactly that timestamp.
    pub at_timestamp: u64,
}

impl LogCursor {
    /// Whether a line stamped `ts`, the `nth` (0-based) of that millisecond, is past the cursor.
    pub fn is_new(&self, ts: u64, nth: u64) -> bool {
        ts > self.timestamp_ms || ts == self.timestamp_ms && nth >= self.at_timestamp
    }

    /// The cursor after a line stamped `ts`.
    pub fn advance(&mut self, ts: u64) {
        if ts == self.timestamp_ms {
            self.at_timestamp += 1;
        } else if ts > self.timestamp_ms {
            self.timestamp_ms = ts;
            self.at_timestamp = 1;
        }
    }
}

/// One line of a task's output, as sent between agents and to the CLI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskLogLine {
    /// The task.
    pub task: TaskId,
    /// Unix milliseconds.
    pub timestamp_ms: u64,
    /// Standard error (else standard output).
    pub stderr: bool,
    /// The text.
    pub text: String,
}

/// The answer to [`AgentRequest::Directory`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Every node that is not still joining: id, address, whether its role is manager.
    pub nodes: Vec<(NodeId, String, bool)>,
    /// Removed node ids.
    pub removed: Vec<NodeId>,
}

/// Encodes an agent request.
pub fn encode_request(r: &AgentRequest) -> Vec<u8> {
    let mut out = vec![CONTROL_TAG];
    out.extend(serde_json::to_vec(r).expect("requests serialise"));
    out
}

/// Decodes an agent request (the tag byte already checked by the caller).
pub fn decode_request(bytes: &[u8]) -> Result<AgentRequest, String> {
    match bytes.split_first() {
        Some((&CONTROL_TAG, body)) => {
            serde_json::from_slice(body).map_err(|e| format!("malformed agent request: {e}"))
        }
        _ => Err("not an agent request".into()),
    }
}

/// Encodes a response.
pub fn encode_response(r: &Response) -> Vec<u8> {
    serde_json::to_vec(r).expect("responses serialise")
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> Response {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| Response::error(format!("malformed response from a manager: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{Message, MessageBody};

    #[test]
    fn raft_messages_round_trip_and_garbage_is_refused() {
        let m = Message {
            from: 1,
            to: 2,
            term: 3,
            body: MessageBody::Heartbeat { commit: 4, seq: 5 },
        };
        let b = encode_raft(&m);
        assert_eq!(decode_raft(&b).unwrap(), m);
        assert!(decode_raft(&[]).is_err());
        assert!(decode_raft(&[9]).is_err());
        assert!(decode_raft(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_raft(&extra).is_err());
    }

    #[test]
    fn agent_requests_round_trip() {
        let r = AgentRequest::Control {
            req: Request::NodeList { stale: false },
            rid: Some(RequestId { client: 1, seq: 2 }),
            origin: Origin::Operator,
        };
        let b = encode_request(&r);
        assert_eq!(b[0], CONTROL_TAG);
        assert!(matches!(
            decode_request(&b).unwrap(),
            AgentRequest::Control {
                req: Request::NodeList { stale: false },
                rid: Some(RequestId { client: 1, seq: 2 }),
                origin: Origin::Operator,
            }
        ));
        assert!(decode_request(&[0, 1, 2]).is_err());
        assert!(decode_request(&[CONTROL_TAG, b'{']).is_err());
    }
}
