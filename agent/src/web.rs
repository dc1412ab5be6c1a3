//! The live cluster view (`shoal agent --web-addr`): one page in the spirit of Docker's swarm
//! visualizer — nodes as columns with their task cards, services with their convergence —
//! updated by server-sent events. Read-only. The page and its script are embedded in the
//! binary (no CDN, no build step). On a loopback address it is plain HTTP; on any other it is
//! behind the control API's mutual TLS and operator certificates ([`crate::remote`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::agent::Agent;
use crate::api::{NodeView, Request, Response, ServiceView, TaskView};
use crate::raft_driver::now_ms;

/// The page.
const INDEX_HTML: &str = include_str!("web/index.html");
/// Its script.
const APP_JS: &str = include_str!("web/app.js");

/// How often the view polls the cluster for changes.
const POLL: Duration = Duration::from_secs(1);

/// No external resource, no inline script.
const CSP: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'";

/// What the page renders: the cluster as this agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// The node answering.
    pub self_id: String,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// Every service.
    pub services: Vec<ServiceView>,
    /// Every task (history included: the page shows each slot's current one).
    pub tasks: Vec<TaskView>,
    /// Why the view is incomplete (no leader, a worker, not in a swarm), if it is.
    pub error: Option<String>,
    /// When it was taken (Unix milliseconds).
    pub at_ms: u64,
}

/// The cluster now, through the same requests the CLI makes (nodes from this manager's state;
/// services and tasks from the leader).
pub async fn snapshot(agent: &Arc<Agent>) -> Snapshot {
    let mut snap = Snapshot {
        at_ms: now_ms(),
        ..Snapshot::default()
    };
    let mut errors = Vec::new();
    match agent.handle(Request::NodeList { stale: true }, None).await {
        Response::Nodes { self_id, nodes } => {
            snap.self_id = self_id;
            snap.nodes = nodes;
        }
        Response::Error { message } => errors.push(message),
        _ => errors.push("unexpected answer to the node list".into()),
    }
    if errors.is_empty() {
        match agent.handle(Request::ServiceList, None).await {
            Response::Services { services } => snap.services = services,
            Response::Error { message } => errors.push(message),
            _ => errors.push("unexpected answer to the service list".into()),
        }
        let tasks = Request::TaskList {
            services: Vec::new(),
            node: None,
        };
        match agent.handle(tasks, None).await {
            Response::Tasks { tasks } => snap.tasks = tasks,
            Response::Error { message } => errors.push(message),
            _ => errors.push("unexpected answer to the task list".into()),
        }
    }
    if !errors.is_empty() {
        snap.error = Some(errors.join("; "));
    }
    snap
}

/// The view's routes: `/` (the page), `/app.js`, `/state` (one snapshot, JSON) and `/events`
/// (a snapshot whenever the cluster changes, as server-sent events).
pub fn router(agent: Arc<Agent>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route(
            "/state",
            get(
                |axum::extract::State(a): axum::extract::State<Arc<Agent>>| async move {
                    Json(snapshot(&a).await)
                },
            ),
        )
        .route("/events", get(events))
        .with_state(agent)
}

async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX_HTML,
    )
}

async fn app_js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        APP_JS,
    )
}

async fn events(
    axum::extract::State(agent): axum::extract::State<Arc<Agent>>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    // The first snapshot at once, then one whenever something the page shows changed (the
    // timestamp aside); comments keep idle connections open.
    let stream =
        futures_util::stream::unfold((agent, None::<Snapshot>), |(agent, last)| async move {
            loop {
                if last.is_some() {
                    tokio::time::sleep(POLL).await;
                }
                let snap = snapshot(&agent).await;
                let changed = match &last {
                    Some(prev) => {
                        let mut same = snap.clone();
                        same.at_ms = prev.at_ms;
                        same != *prev
                    }
                    None => true,
                };
                if changed {
                    let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
                    return Some((Ok(Event::default().data(data)), (agent, Some(snap))));
                }
            }
        });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Serves the view on `addr`: plain HTTP on a loopback address; on any other, only to clients
/// with an operator certificate of this cluster (mutual TLS, as `--api-addr`).
pub async fn serve(agent: Arc<Agent>, addr: SocketAddr) -> anyhow::Result<()> {
    let app = router(agent.clone());
    if addr.ip().is_loopback() {
        // A web page elsewhere must not read the view through DNS rebinding: on plain HTTP
        // only requests naming a loopback host are answered.
        let app = app.layer(axum::middleware::from_fn(local_host_only));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        axum::serve(listener, app).await?;
        Ok(())
    } else {
        crate::remote::serve_api(agent, addr, app).await
    }
}

/// Refuses a request whose `Host` is not a loopback name or address (DNS rebinding).
async fn local_host_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if is_loopback_host(host) {
        next.run(req).await
    } else {
        (
            axum::http::StatusCode::FORBIDDEN,
            "the cluster view on a loopback address answers only to a loopback Host (localhost, 127.0.0.1, [::1])",
        )
            .into_response()
    }
}

/// Whether a `Host` header (name or address, with an optional port) is this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((inside, tail)) if tail.is_empty() || tail.starts_with(':') => inside,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_host;

    #[test]
    fn only_loopback_hosts_are_local() {
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "[::1]",
            "127.3.4.5:1",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example:8080",
            "10.0.0.1:8080",
            "[::2]:80",
            "[::1]x",
            "localhost.evil.example",
            "127.0.0.1.evil.example:80",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
