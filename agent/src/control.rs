//! The control API: the HTTP + JSON server on the Unix socket, and how a member answers each
//! request — on the leader, by forwarding to it, or (workers) through a manager. With no
//! leader, the answer says why at once.

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path as UrlPath, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use shoal_cluster::{
    check_demote, check_remove, no_leader, node_id_string, parse_label, quorum, Availability,
    ClusterError, Command, ManagerView, Node, NodeState, NodeUpdate, Role, SecretKind, SecretSpec,
};
use shoal_membership::State;
use shoal_transport::pki::JoinToken;

use crate::agent::{Agent, Member};
use crate::api::{NodeUpdateRequest, NodeView, Request, Response};
use crate::raft_driver::{now_ms, RaftHandle, RaftStatus};
use crate::wire::{self, AgentRequest, Origin};
use shoal_cluster::RequestId;

/// What a worker's CLI (or a worker's certificate asking a manager) gets for anything that reads
/// or changes cluster state, in docker's words.
pub const NOT_A_MANAGER: &str = "this node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

/// The HTTP header carrying the CLI's request id (`<16 hex>-<n>`), so that a retried write is
/// applied once.
pub const REQUEST_ID_HEADER: &str = "x-shoal-request-id";

/// How long a request waits for an election when a quorum of managers is alive.
const ELECTION_WAIT: Duration = Duration::from_secs(5);
/// How long a forwarded request may take before the peer is taken as unreachable. Commits wait
/// up to 10 s on the leader, so this is longer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(12);

/// Serves the control API on `socket` until the process ends.
pub async fn serve(agent: Arc<Agent>, socket: &Path) -> anyhow::Result<()> {
    if socket.exists() {
        std::fs::remove_file(socket)?;
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    }
    axum::serve(listener, router(agent)).await?;
    Ok(())
}

/// Every route of the control API, on `agent` (the Unix socket and `--api-addr` serve the same).
pub fn router(agent: Arc<Agent>) -> Router {
    let app = Router::new()
        .route("/v1/info", get(info))
        .route("/v1/swarm/init", post(init))
        .route("/v1/swarm/join", post(join))
        .route("/v1/swarm/join-token/{role}", get(join_token))
        .route("/v1/swarm/leave", post(leave))
        .route("/v1/nodes", get(node_list))
        .route("/v1/nodes/{node}", get(node_inspect))
        .route("/v1/nodes/{node}", delete(node_remove))
        .route("/v1/nodes/{node}/promote", post(node_promote))
        .route("/v1/nodes/{node}/demote", post(node_demote))
        .route("/v1/nodes/{node}/update", post(node_update))
        .route("/v1/services", get(service_list))
        .route("/v1/services/create", post(service_create))
        .route("/v1/services/{service}", get(service_inspect))
        .route("/v1/services/{service}", delete(service_remove))
        .route("/v1/services/{service}/update", post(service_update))
        .route("/v1/services/{service}/rollback", post(service_rollback))
        .route("/v1/services/{service}/endpoints", get(service_endpoints))
        .route("/v1/tasks", post(task_list))
        .route("/v1/services/{service}/logs", post(service_logs))
        .route("/v1/swarm/update", post(swarm_update))
        .route("/v1/swarm/unlock", post(unlock))
        .route("/v1/swarm/unlock-key", get(unlock_key))
        .route(
            "/v1/secrets",
            get(|a: Ax| secret_list(a, SecretKind::Secret)),
        )
        .route(
            "/v1/configs",
            get(|a: Ax| secret_list(a, SecretKind::Config)),
        )
        .route(
            "/v1/secrets/create",
            post(|a: Ax, h: HeaderMap, b: Json<SecretBody>| {
                secret_create(a, h, b, SecretKind::Secret)
            }),
        )
        .route(
            "/v1/configs/create",
            post(|a: Ax, h: HeaderMap, b: Json<SecretBody>| {
                secret_create(a, h, b, SecretKind::Config)
            }),
        )
        .route(
            "/v1/secrets/{name}",
            get(|a: Ax, n: UrlPath<String>| secret_inspect(a, n, SecretKind::Secret)).delete(
                |a: Ax, h: HeaderMap, n: UrlPath<String>| {
                    secret_remove(a, h, n, SecretKind::Secret)
                },
            ),
        )
        .route(
            "/v1/configs/{name}",
            get(|a: Ax, n: UrlPath<String>| secret_inspect(a, n, SecretKind::Config)).delete(
                |a: Ax, h: HeaderMap, n: UrlPath<String>| {
                    secret_remove(a, h, n, SecretKind::Config)
                },
            ),
        )
        .route(
            "/v1/swarm/ca/client-certs",
            get(client_cert_list).post(client_cert_issue),
        )
        .route(
            "/v1/swarm/ca/client-certs/{name}",
            delete(client_cert_remove),
        )
        .route("/metrics", get(metrics));
    let app = if crate::test_clock::enabled() {
        app.route("/v1/test/clock", post(test_clock))
    } else {
        app
    };
    app.with_state(agent)
}

/// Serves `GET /metrics` only (nothing that reads or changes the cluster) on a TCP address, for
/// Prometheus-style scrapers on other machines.
pub async fn serve_metrics(agent: Arc<Agent>, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new().route("/metrics", get(metrics));
    let app = if crate::test_clock::enabled() {
        app.route("/v1/test/clock", post(test_clock))
    } else {
        app
    };
    axum::serve(listener, app.with_state(agent)).await?;
    Ok(())
}

async fn metrics(AxState(a): Ax) -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        a.metrics().await,
    )
        .into_response()
}

#[derive(Deserialize)]
struct ClockBody {
    offset_ms: i64,
    rate: f64,
}

/// `POST /v1/test/clock` (only with `SHOAL_TEST_HOOKS=1`): skews this agent's clocks.
async fn test_clock(Json(b): Json<ClockBody>) -> axum::response::Response {
    match crate::test_clock::set(b.offset_ms, b.rate) {
        Ok(()) => {
            tracing::warn!(
                offset_ms = b.offset_ms,
                rate = b.rate,
                "test clock hook: clocks skewed"
            );
            (StatusCode::OK, Json(Response::ok(""))).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(Response::error(e))).into_response(),
    }
}

/// The request id of a call, if it carries a well-formed one.
fn request_id(headers: &HeaderMap) -> Result<Option<RequestId>, String> {
    match headers.get(REQUEST_ID_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map_err(|_| "invalid request id".to_string())
            .and_then(RequestId::from_str)
            .map(Some),
    }
}

macro_rules! with_rid {
    ($a:expr, $headers:expr, $req:expr) => {
        match request_id(&$headers) {
            Ok(rid) => answer_with(&$a, $req, rid).await,
            Err(e) => (StatusCode::BAD_REQUEST, Json(Response::error(e))).into_response(),
        }
    };
}

type Ax = AxState<Arc<Agent>>;

async fn answer(agent: &Arc<Agent>, req: Request) -> axum::response::Response {
    answer_with(agent, req, None).await
}

async fn answer_with(
    agent: &Arc<Agent>,
    req: Request,
    rid: Option<RequestId>,
) -> axum::response::Response {
    let resp = agent.handle(req, rid).await;
    let code = match &resp {
        Response::Error { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::OK,
    };
    (code, Json(resp)).into_response()
}

#[derive(Deserialize, Default)]
struct Flags {
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    rotate: bool,
}

#[derive(Deserialize)]
struct InitBody {
    #[serde(default)]
    advertise_addr: Option<String>,
    #[serde(default)]
    force_new_cluster: bool,
    #[serde(default)]
    autolock: bool,
}

#[derive(Deserialize)]
struct ClientCertBody {
    name: String,
    #[serde(default)]
    read_only: bool,
    csr: String,
    expiry_secs: u64,
}

#[derive(Deserialize)]
struct JoinBody {
    token: String,
    remote_addr: String,
}

async fn client_cert_list(AxState(a): Ax) -> axum::response::Response {
    answer(&a, Request::ClientCertList).await
}

async fn client_cert_issue(
    AxState(a): Ax,
    headers: HeaderMap,
    Json(b): Json<ClientCertBody>,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::ClientCertIssue {
            name: b.name,
            read_only: b.read_only,
            csr: b.csr,
            expiry_secs: b.expiry_secs,
        }
    )
}

async fn client_cert_remove(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::ClientCertRemove { name })
}

async fn info(AxState(a): Ax) -> axum::response::Response {
    answer(&a, Request::Info).await
}

async fn init(AxState(a): Ax, Json(b): Json<InitBody>) -> axum::response::Response {
    answer(
        &a,
        Request::Init {
            advertise_addr: b.advertise_addr,
            force_new_cluster: b.force_new_cluster,
            autolock: b.autolock,
        },
    )
    .await
}

async fn join(AxState(a): Ax, Json(b): Json<JoinBody>) -> axum::response::Response {
    answer(
        &a,
        Request::Join {
            token: b.token,
            remote_addr: b.remote_addr,
        },
    )
    .await
}

async fn join_token(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(role): UrlPath<String>,
    Query(f): Query<Flags>,
) -> axum::response::Response {
    match Role::from_str(&role) {
        Ok(role) => {
            with_rid!(
                a,
                headers,
                Request::JoinToken {
                    role,
                    rotate: f.rotate,
                }
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, Json(Response::error(e))).into_response(),
    }
}

async fn leave(AxState(a): Ax, Query(f): Query<Flags>) -> axum::response::Response {
    answer(&a, Request::Leave { force: f.force }).await
}

async fn node_list(AxState(a): Ax, Query(f): Query<Flags>) -> axum::response::Response {
    answer(&a, Request::NodeList { stale: f.stale }).await
}

async fn node_inspect(
    AxState(a): Ax,
    UrlPath(node): UrlPath<String>,
    Query(f): Query<Flags>,
) -> axum::response::Response {
    answer(
        &a,
        Request::NodeInspect {
            node,
            stale: f.stale,
        },
    )
    .await
}

async fn node_remove(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
    Query(f): Query<Flags>,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::NodeRemove {
            node,
            force: f.force,
        }
    )
}

async fn node_promote(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::NodePromote { node })
}

async fn node_demote(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::NodeDemote { node })
}

async fn node_update(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(node): UrlPath<String>,
    Json(update): Json<NodeUpdateRequest>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::NodeUpdate { node, update })
}

#[derive(Deserialize)]
struct CreateBody {
    spec: shoal_cluster::ServiceSpec,
}

#[derive(Deserialize)]
struct UpdateBody {
    version: u64,
    spec: shoal_cluster::ServiceSpec,
}

#[derive(Deserialize, Default)]
struct TasksBody {
    #[serde(default)]
    services: Vec<String>,
    #[serde(default)]
    node: Option<String>,
}

#[derive(Deserialize, Default)]
struct SwarmUpdateBody {
    #[serde(default)]
    task_history_limit: Option<u32>,
    #[serde(default)]
    autolock: Option<bool>,
}

#[derive(Deserialize)]
struct UnlockBody {
    key: String,
}

async fn unlock(AxState(a): Ax, Json(b): Json<UnlockBody>) -> axum::response::Response {
    answer(&a, Request::Unlock { key: b.key }).await
}

async fn unlock_key(AxState(a): Ax, Query(f): Query<Flags>) -> axum::response::Response {
    answer(&a, Request::UnlockKey { rotate: f.rotate }).await
}

async fn service_list(AxState(a): Ax) -> axum::response::Response {
    answer(&a, Request::ServiceList).await
}

async fn service_create(
    AxState(a): Ax,
    headers: HeaderMap,
    Json(b): Json<CreateBody>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::ServiceCreate { spec: b.spec })
}

async fn service_inspect(
    AxState(a): Ax,
    UrlPath(service): UrlPath<String>,
) -> axum::response::Response {
    answer(&a, Request::ServiceInspect { service }).await
}

/// Where a service answers: its ingress ports and its running tasks' addresses (what the
/// mesh and the name server use).
async fn service_endpoints(
    AxState(a): Ax,
    UrlPath(service): UrlPath<String>,
) -> axum::response::Response {
    match a.handle(Request::ServiceInspect { service }, None).await {
        Response::Service { service } => match service.endpoints {
            Some(e) => (StatusCode::OK, Json(e)).into_response(),
            None => (
                StatusCode::BAD_REQUEST,
                Json(Response::error("the service has no endpoints")),
            )
                .into_response(),
        },
        other => (StatusCode::BAD_REQUEST, Json(other)).into_response(),
    }
}

async fn service_remove(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(service): UrlPath<String>,
) -> axum::response::Response {
    with_rid!(a, headers, Request::ServiceRemove { service })
}

async fn service_update(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(service): UrlPath<String>,
    Json(b): Json<UpdateBody>,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::ServiceUpdate {
            service,
            version: b.version,
            spec: b.spec,
        }
    )
}

#[derive(Deserialize, Default)]
struct RollbackBody {
    #[serde(default)]
    version: Option<u64>,
}

async fn service_rollback(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(service): UrlPath<String>,
    Json(b): Json<RollbackBody>,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::ServiceRollback {
            service,
            version: b.version,
        }
    )
}

#[derive(Deserialize, Default)]
struct LogsBody {
    #[serde(default)]
    tail: Option<usize>,
    #[serde(default)]
    cursors: std::collections::BTreeMap<String, crate::wire::LogCursor>,
}

async fn service_logs(
    AxState(a): Ax,
    UrlPath(service): UrlPath<String>,
    Json(b): Json<LogsBody>,
) -> axum::response::Response {
    answer(
        &a,
        Request::ServiceLogs {
            service,
            tail: b.tail,
            cursors: b.cursors,
        },
    )
    .await
}

async fn task_list(AxState(a): Ax, Json(b): Json<TasksBody>) -> axum::response::Response {
    answer(
        &a,
        Request::TaskList {
            services: b.services,
            node: b.node,
        },
    )
    .await
}

async fn swarm_update(
    AxState(a): Ax,
    headers: HeaderMap,
    Json(b): Json<SwarmUpdateBody>,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::SwarmUpdate {
            task_history_limit: b.task_history_limit,
            autolock: b.autolock,
        }
    )
}

#[derive(Deserialize)]
struct SecretBody {
    spec: SecretSpec,
    #[serde(default)]
    exist_ok: bool,
}

async fn secret_list(AxState(a): Ax, kind: SecretKind) -> axum::response::Response {
    answer(&a, Request::SecretList { kind }).await
}

async fn secret_create(
    AxState(a): Ax,
    headers: HeaderMap,
    Json(b): Json<SecretBody>,
    kind: SecretKind,
) -> axum::response::Response {
    with_rid!(
        a,
        headers,
        Request::SecretCreate {
            kind,
            spec: b.spec,
            exist_ok: b.exist_ok
        }
    )
}

async fn secret_inspect(
    AxState(a): Ax,
    UrlPath(name): UrlPath<String>,
    kind: SecretKind,
) -> axum::response::Response {
    answer(&a, Request::SecretInspect { kind, name }).await
}

async fn secret_remove(
    AxState(a): Ax,
    headers: HeaderMap,
    UrlPath(name): UrlPath<String>,
    kind: SecretKind,
) -> axum::response::Response {
    with_rid!(a, headers, Request::SecretRemove { kind, name })
}

// ------------------------------------------------------------------ answering

/// Is this a read that may be answered from a follower's own state?
fn stale_read(req: &Request) -> bool {
    matches!(
        req,
        Request::NodeList { stale: true } | Request::NodeInspect { stale: true, .. }
    )
}

impl Member {
    /// Answers a request from this node's CLI (an operator). A worker answers nothing about the
    /// cluster: it holds no state, and its certificate may not ask a manager for any.
    pub async fn control(self: &Arc<Self>, req: Request, rid: Option<RequestId>) -> Response {
        if self.raft().is_none() {
            return Response::error(NOT_A_MANAGER);
        }
        // Logs come from the nodes, gathered by the manager asked (no leader needed).
        if let Request::ServiceLogs {
            service,
            tail,
            cursors,
        } = req
        {
            return self.service_logs(&service, tail, cursors).await;
        }
        let mut resp = self.control_hop(req, rid, Origin::Operator, false).await;
        // `*` in `node ls` marks the node the CLI talks to, whoever answered.
        match &mut resp {
            Response::Nodes { self_id, .. } | Response::Node { self_id, .. } => {
                *self_id = node_id_string(self.id);
            }
            _ => {}
        }
        resp
    }

    /// Answers `req` made by `origin` (already authorized) on this manager: on the leader, or
    /// by forwarding it there. `forwarded`: the request came from a manager that believed this
    /// node leads; if it no longer does, say so rather than forwarding again (no loops).
    pub async fn control_hop(
        self: &Arc<Self>,
        req: Request,
        rid: Option<RequestId>,
        origin: Origin,
        forwarded: bool,
    ) -> Response {
        // A replica that just stopped (demotion) is as good as none.
        let Some(h) = self.raft().filter(|h| !h.status.borrow().stopped) else {
            return Response::error(NOT_A_MANAGER);
        };
        if let Some(why) = h.status.borrow().failed.clone() {
            return Response::error(format!(
                "this manager stopped its Raft replica: {why}; fix the disk and restart the agent"
            ));
        }
        if stale_read(&req) {
            let status = h.status.borrow().clone();
            return self.read(&h, &status, req);
        }
        // A leader that just died is still "the leader" until the election: if the leader
        // changes while a request is forwarded to it, send it to the new one.
        let mut rx = h.status.clone();
        loop {
            let leader = match self.await_leader(&h).await {
                Ok(l) => l,
                Err(resp) => return resp,
            };
            if leader == self.id {
                return self.on_leader(&h, req, rid).await;
            }
            if forwarded {
                return Response::error("leadership moved while the request was forwarded; retry");
            }
            rx.borrow_and_update();
            let fwd = self.forward(leader, req.clone(), rid, origin);
            tokio::pin!(fwd);
            let answered = loop {
                tokio::select! {
                    biased;
                    r = &mut fwd => break Some(r),
                    changed = rx.changed() => {
                        if changed.is_err() {
                            return Response::error("the Raft replica stopped");
                        }
                        if rx.borrow_and_update().leader != Some(leader) {
                            break None;
                        }
                    }
                }
            };
            if let Some(r) = answered {
                return r;
            }
        }
    }

    /// The leader's id, waiting a little for an election if gossip says a quorum of managers is
    /// alive; otherwise (or if none comes) the cause, counting after the wait only the managers
    /// this node actually hears from.
    async fn await_leader(&self, h: &RaftHandle) -> Result<u64, Response> {
        let mut rx = h.status.clone();
        let deadline = tokio::time::Instant::now() + ELECTION_WAIT;
        loop {
            let s = rx.borrow_and_update().clone();
            if let Some(l) = s.leader {
                return Ok(l);
            }
            let voters: BTreeSet<u64> = s.membership.voters.clone();
            let alive = self.alive_voters(&voters);
            let total = voters.len().max(1);
            if alive < quorum(total) {
                return Err(Response::error(no_leader(alive, total)));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The replica stopped (this manager was just demoted): nothing will change.
                Ok(Err(_)) => {
                    return Err(Response::error("this node is no longer a manager; retry"))
                }
                // No leader came: count the voters this node actually hears from (gossip
                // may still believe in members a partition has cut off for seconds).
                Err(_) => {
                    let s = rx.borrow().clone();
                    let heard = s.heard_from.intersection(&voters).count();
                    return Err(Response::error(no_leader(heard, total)));
                }
            }
        }
    }

    /// Forwards `req` to the leader, retrying twice when the connection broke (a peer renewing
    /// its certificate reconnects, for instance); a peer that does not answer at all is
    /// reported. Retries carry the same request id, so a write is applied once.
    async fn forward(
        &self,
        to: u64,
        req: Request,
        rid: Option<RequestId>,
        origin: Origin,
    ) -> Response {
        let bytes = wire::encode_request(&AgentRequest::ToLeader { req, rid, origin });
        let mut answer = self.forward_once(to, &bytes).await;
        for _ in 0..2 {
            match &answer {
                Response::Error { message }
                    if message.starts_with("cannot reach") && message.contains("connection") =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    answer = self.forward_once(to, &bytes).await;
                }
                _ => break,
            }
        }
        answer
    }

    async fn forward_once(&self, to: u64, bytes: &[u8]) -> Response {
        match tokio::time::timeout(FORWARD_TIMEOUT, self.transport.request(to, bytes)).await {
            Ok(Ok(resp)) => wire::decode_response(&resp),
            Ok(Err(e)) => Response::error(format!(
                "cannot reach the leader {}: {e}",
                node_id_string(to)
            )),
            Err(_) => Response::error(format!(
                "cannot reach the leader {}: no answer within {}s",
                node_id_string(to),
                FORWARD_TIMEOUT.as_secs()
            )),
        }
    }

    fn manager_view(&self, status: &RaftStatus) -> ManagerView {
        let mut voters = status.membership.voters.clone();
        voters.extend(status.membership.outgoing.iter().copied());
        ManagerView {
            voters,
            reachable: status.reachable.clone(),
        }
    }

    /// Builds the answer to a read from this node's state.
    fn read(&self, h: &RaftHandle, status: &RaftStatus, req: Request) -> Response {
        let st = h.state.read().expect("state");
        let reachable = if status.leader == Some(self.id) {
            status.reachable.clone()
        } else {
            self.gossip_alive()
        };
        let view = |n: &Node| node_view(n, status, &reachable);
        match req {
            Request::NodeList { .. } => Response::Nodes {
                self_id: node_id_string(self.id),
                nodes: st.nodes().values().map(view).collect(),
            },
            Request::NodeInspect { node, .. } => match st.resolve(&node) {
                Ok(n) => Response::Node {
                    self_id: node_id_string(self.id),
                    node: Box::new(view(n)),
                },
                Err(e) => Response::error(e),
            },
            _ => Response::error("not a read"),
        }
    }

    fn gossip_alive(&self) -> BTreeSet<u64> {
        let view = self.gossip.view.lock().expect("view");
        let mut out: BTreeSet<u64> = view
            .iter()
            .filter(|(_, m)| matches!(m.state, State::Alive | State::Suspect))
            .map(|(id, _)| *id)
            .collect();
        out.insert(self.id);
        out
    }

    async fn on_leader(
        self: &Arc<Self>,
        h: &RaftHandle,
        mut req: Request,
        rid: Option<RequestId>,
    ) -> Response {
        // A retry of a write already applied gets the first answer, before any check that the
        // first attempt's effect would now fail ("node not found" after a remove).
        let first = rid.and_then(|id| h.state.read().expect("state").request_result(&id).cloned());
        match first {
            Some(Err(message)) => return Response::error(message),
            Some(Ok(())) => match &mut req {
                Request::JoinToken { rotate, .. } => *rotate = false,
                Request::NodePromote { node } => {
                    return Response::ok(format!("Node {node} promoted to a manager in the swarm."))
                }
                Request::NodeDemote { node } => {
                    return Response::ok(format!("Manager {node} demoted in the swarm."))
                }
                Request::NodeRemove { node, .. } | Request::NodeUpdate { node, .. } => {
                    return Response::ok(node.clone())
                }
                Request::ServiceCreate { spec } => return crate::services::created(h, &spec.name),
                Request::ServiceUpdate { service, .. }
                | Request::ServiceRollback { service, .. }
                | Request::ServiceRemove { service } => return Response::ok(service.clone()),
                Request::SwarmUpdate {
                    autolock: Some(true),
                    ..
                } => return crate::services::unlock_key_answer(h, true),
                Request::SwarmUpdate { .. } => return Response::ok(""),
                Request::SecretCreate { kind, spec, .. } => {
                    return crate::services::secret_created(h, *kind, &spec.name)
                }
                Request::SecretRemove { name, .. } => return Response::ok(name.clone()),
                Request::ClientCertRemove { name } => return Response::ok(name.clone()),
                _ => {}
            },
            None => {}
        }
        match req {
            Request::NodeList { .. } | Request::NodeInspect { .. } => {
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                let status = h.status.borrow().clone();
                self.read(h, &status, req)
            }
            Request::NodePromote { node } => {
                let n = match resolve(h, &node) {
                    Ok(n) => n,
                    Err(e) => return *e,
                };
                if n.desired_role == Role::Manager {
                    return Response::ok(format!("Node {node} is already a manager."));
                }
                self.update_role(
                    rid,
                    n.id,
                    Role::Manager,
                    &node,
                    format!("Node {node} promoted to a manager in the swarm."),
                )
                .await
            }
            Request::NodeDemote { node } => {
                let n = match resolve(h, &node) {
                    Ok(n) => n,
                    Err(e) => return *e,
                };
                let status = h.status.borrow().clone();
                if n.desired_role == Role::Worker && !status.membership.is_voter(n.id) {
                    return Response::ok(format!("Node {node} is already a worker."));
                }
                if let Err(e) = check_demote(
                    &h.state.read().expect("state"),
                    n.id,
                    &self.manager_view(&status),
                ) {
                    return Response::error(e);
                }
                self.update_role(
                    rid,
                    n.id,
                    Role::Worker,
                    &node,
                    format!("Manager {node} demoted in the swarm."),
                )
                .await
            }
            Request::NodeRemove { node, force } => {
                let n = match resolve(h, &node) {
                    Ok(n) => n,
                    Err(e) => return *e,
                };
                let status = h.status.borrow().clone();
                if let Err(e) = check_remove(
                    &h.state.read().expect("state"),
                    n.id,
                    force,
                    &self.manager_view(&status),
                ) {
                    return Response::error(e);
                }
                match self
                    .propose_as(
                        rid,
                        Command::RemoveNode {
                            id: n.id,
                            at_ms: now_ms(),
                        },
                    )
                    .await
                {
                    Ok(()) => Response::ok(node),
                    Err(e) => Response::error(e),
                }
            }
            Request::NodeUpdate { node, update } => {
                let n = match resolve(h, &node) {
                    Ok(n) => n,
                    Err(e) => return *e,
                };
                let mut u = NodeUpdate {
                    availability: update.availability,
                    labels_rm: update.label_rm.clone(),
                    desired_role: update.role,
                    expected_version: update.version,
                    ..Default::default()
                };
                for spec in &update.label_add {
                    match parse_label(spec) {
                        Ok((k, v)) => {
                            u.labels_add.insert(k, v);
                        }
                        Err(e) => return Response::error(e),
                    }
                }
                if update.role == Some(Role::Worker) {
                    let status = h.status.borrow().clone();
                    if status.membership.is_voter(n.id) || n.role == Role::Manager {
                        if let Err(e) = check_demote(
                            &h.state.read().expect("state"),
                            n.id,
                            &self.manager_view(&status),
                        ) {
                            return Response::error(e);
                        }
                    }
                }
                match self
                    .propose_as(
                        rid,
                        Command::UpdateNode {
                            id: n.id,
                            update: u,
                            at_ms: now_ms(),
                        },
                    )
                    .await
                {
                    Ok(()) => Response::ok(node),
                    Err(e) => Response::error(e),
                }
            }
            Request::JoinToken { role, rotate } => {
                if rotate {
                    let digest = {
                        let st = h.state.read().expect("state");
                        let Some(c) = st.cluster() else {
                            return Response::error(ClusterError::NotInitialized);
                        };
                        match JoinToken::from_str(c.token(role)) {
                            Ok(t) => t.ca_digest,
                            Err(e) => return Response::error(e),
                        }
                    };
                    let token = JoinToken::generate(digest).to_string();
                    if let Err(e) = self
                        .propose_as(
                            rid,
                            Command::RotateJoinToken {
                                role,
                                token,
                                at_ms: now_ms(),
                            },
                        )
                        .await
                    {
                        return Response::error(e);
                    }
                }
                let st = h.state.read().expect("state");
                match st.cluster() {
                    Some(c) => Response::Token {
                        role,
                        token: c.token(role).to_string(),
                        manager_addr: self.advertise.to_string(),
                    },
                    None => Response::error(ClusterError::NotInitialized),
                }
            }
            Request::Info
            | Request::Init { .. }
            | Request::Join { .. }
            | Request::Leave { .. }
            | Request::Unlock { .. } => {
                Response::error("this request is answered by the node itself")
            }
            Request::ServiceLogs {
                service,
                tail,
                cursors,
            } => self.service_logs(&service, tail, cursors).await,
            r @ (Request::ServiceCreate { .. }
            | Request::ServiceList
            | Request::ServiceInspect { .. }
            | Request::ServiceUpdate { .. }
            | Request::ServiceRollback { .. }
            | Request::ServiceRemove { .. }
            | Request::TaskList { .. }
            | Request::SwarmUpdate { .. }
            | Request::UnlockKey { .. }
            | Request::SecretCreate { .. }
            | Request::SecretList { .. }
            | Request::SecretInspect { .. }
            | Request::SecretRemove { .. }) => self.on_leader_services(h, r, rid).await,
            r @ (Request::ClientCertIssue { .. }
            | Request::ClientCertList
            | Request::ClientCertRemove { .. }) => self.on_leader_operators(h, r, rid).await,
        }
    }

    async fn update_role(
        &self,
        rid: Option<RequestId>,
        id: u64,
        role: Role,
        _arg: &str,
        ok: String,
    ) -> Response {
        match self
            .propose_as(
                rid,
                Command::UpdateNode {
                    id,
                    update: NodeUpdate {
                        desired_role: Some(role),
                        ..Default::default()
                    },
                    at_ms: now_ms(),
                },
            )
            .await
        {
            Ok(()) => Response::ok(ok),
            Err(e) => Response::error(e),
        }
    }
}

fn resolve(h: &RaftHandle, node: &str) -> Result<Node, Box<Response>> {
    h.state
        .read()
        .expect("state")
        .resolve(node)
        .cloned()
        .map_err(|e| Box::new(Response::error(e)))
}

/// A node as the CLI shows it. MANAGER STATUS is for Raft voters: Leader, Reachable when the
/// leader heard from it within an election timeout (on a follower: membership says alive),
/// else Unreachable.
pub fn node_view(n: &Node, status: &RaftStatus, reachable: &BTreeSet<u64>) -> NodeView {
    let manager_status = if status.membership.is_voter(n.id) {
        if status.leader == Some(n.id) {
            "Leader"
        } else if reachable.contains(&n.id) {
            "Reachable"
        } else {
            "Unreachable"
        }
    } else {
        ""
    };
    NodeView {
        id: node_id_string(n.id),
        hostname: n.description.hostname.clone(),
        status: match n.status.state {
            NodeState::Ready => "Ready",
            NodeState::Down => "Down",
            NodeState::Unknown => "Unknown",
            NodeState::Disconnected => "Disconnected",
        }
        .into(),
        status_message: n.status.message.clone(),
        availability: match n.availability {
            Availability::Active => "Active",
            Availability::Pause => "Pause",
            Availability::Drain => "Drain",
        }
        .into(),
        manager_status: manager_status.into(),
        engine_version: n.description.engine_version.clone(),
        agent_version: n.description.agent_version.clone(),
        runtime_problems: n.description.runtime_problems.clone(),
        role: n.role.to_string(),
        desired_role: n.desired_role.to_string(),
        addr: n.addr.clone(),
        labels: n.labels.clone(),
        os: n.description.platform.os.clone(),
        arch: n.description.platform.arch.clone(),
        nano_cpus: n.description.resources.nano_cpus,
        memory_bytes: n.description.resources.memory_bytes,
        created_at_ms: n.created_at_ms,
        updated_at_ms: n.updated_at_ms,
        version: n.version,
        runtimes: n
            .description
            .runtimes
            .iter()
            .map(|r| r.as_str().to_string())
            .collect(),
        limits_enforced: n.description.limits_enforced,
    }
}
