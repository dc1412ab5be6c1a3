//! Remote management: the control API on TCP with mutual TLS (`shoal agent --api-addr`), and
//! the operators' client certificates it accepts (`shoal swarm ca client-cert`).
//!
//! Every connection must present an operator certificate of this cluster (checked in the
//! handshake: chain to the cluster CA, validity, cluster, operator and not node certificate).
//! Every request is then checked against the replicated list of operators, so that a removed
//! certificate is refused at once, and a read-only certificate may only list and inspect.
//! Workers keep no cluster state, so they refuse remote requests: operators use a manager.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use hyper_util::rt::TokioIo;
use shoal_cluster::{Command, Operator};
use shoal_transport::pki::{self, Access, ClusterCa, OperatorCertificate};
use tower::ServiceExt;

use crate::agent::{Agent, Member};
use crate::api::{Request, Response};
use crate::raft_driver::{now_ms, RaftHandle};
use shoal_cluster::RequestId;

/// Shortest validity of an operator certificate.
pub const MIN_CLIENT_CERT_SECS: u64 = 60;

/// Longest validity of an operator certificate: a year (the CA itself lasts ten).
pub const MAX_CLIENT_CERT_SECS: u64 = 365 * 24 * 3600;

/// Largest signing request accepted (a P-256 request is about 250 bytes).
const MAX_CSR_BYTES: usize = 4096;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections served at once on `--api-addr` (or a non-loopback `--web-addr`): each holds
/// a file descriptor the agent's Raft log and sockets also need.
pub const MAX_API_CONNECTIONS: usize = 512;

/// Most connections from one IP address still in the TLS handshake, i.e. not yet proven an
/// operator: a peer without a certificate cannot take everyone's share.
pub const MAX_HANDSHAKES_PER_IP: usize = 16;

/// The connections of `--api-addr` being served, and those per address still in the handshake.
#[derive(Default)]
struct Slots {
    open: usize,
    handshaking: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// Counts a connection and, until [`Slot::authenticated`], its address's handshake.
struct Slot {
    slots: Arc<std::sync::Mutex<Slots>>,
    ip: Option<std::net::IpAddr>,
}

impl Slots {
    /// A slot for a connection from `ip`, if it is under both limits.
    fn take(this: &Arc<std::sync::Mutex<Slots>>, ip: std::net::IpAddr) -> Option<Slot> {
        let mut s = this.lock().expect("slots");
        let shaking = s.handshaking.get(&ip).copied().unwrap_or(0);
        if s.open >= MAX_API_CONNECTIONS || shaking >= MAX_HANDSHAKES_PER_IP {
            return None;
        }
        s.open += 1;
        *s.handshaking.entry(ip).or_default() += 1;
        Some(Slot {
            slots: this.clone(),
            ip: Some(ip),
        })
    }

    fn release_handshake(&mut self, ip: std::net::IpAddr) {
        if let Some(n) = self.handshaking.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.handshaking.remove(&ip);
            }
        }
    }
}

impl Slot {
    /// The handshake is over: the address's handshake count goes down, the connection stays.
    fn authenticated(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.slots.lock().expect("slots").release_handshake(ip);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().expect("slots");
        s.open -= 1;
        if let Some(ip) = self.ip.take() {
            s.release_handshake(ip);
        }
    }
}

/// Whether a read-only certificate may send this request: reads, except the join tokens and
/// the unlock key (secrets in all but name); the task list and logs, which are reads sent as
/// POST.
pub fn read_only_allows(method: &Method, path: &str) -> bool {
    if *method == Method::GET {
        !(path.starts_with("/v1/swarm/join-token") || path.starts_with("/v1/swarm/unlock-key"))
    } else if *method == Method::POST {
        path == "/v1/tasks" || (path.starts_with("/v1/services/") && path.ends_with("/logs"))
    } else {
        false
    }
}

/// Why an operator's request is refused, if it is: the certificate must still be recorded in
/// the cluster (not removed), not expired, and allowed this request.
pub fn refusal(
    operators: Option<&std::collections::BTreeMap<String, Operator>>,
    cert: &OperatorCertificate,
    now_ms: u64,
    method: &Method,
    path: &str,
) -> Option<(StatusCode, String)> {
    let Some(operators) = operators else {
        return Some((
            StatusCode::FORBIDDEN,
            "this node is not a swarm manager: it cannot check client certificates (connect to a manager's --api-addr)".into(),
        ));
    };
    let recorded = operators
        .get(&cert.serial)
        .filter(|o| o.name == cert.name && o.read_only == (cert.access == Access::ReadOnly));
    let Some(recorded) = recorded else {
        return Some((
            StatusCode::FORBIDDEN,
            format!(
                "the client certificate of {} was removed from the swarm (ask an administrator for a new one)",
                cert.name
            ),
        ));
    };
    if now_ms > recorded.not_after_ms {
        return Some((
            StatusCode::FORBIDDEN,
            format!("the client certificate of {} has expired", cert.name),
        ));
    }
    if recorded.read_only && !read_only_allows(method, path) {
        return Some((
            StatusCode::FORBIDDEN,
            format!(
                "the client certificate of {} is read-only: it may list and inspect, not {method} {path}",
                cert.name
            ),
        ));
    }
    None
}

/// Serves the control API (`app`, the same routes as the Unix socket) on `addr` with mutual TLS.
/// Connections are refused until this node is part of a swarm (it has no certificate before).
pub async fn serve_api(agent: Arc<Agent>, addr: SocketAddr, app: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("--api-addr: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Over a limit: closed at once, so that a flood costs no descriptor for long.
        let Some(slot) = Slots::take(&slots, peer.ip()) else {
            tracing::debug!(%peer, "--api-addr: too many connections, closed");
            drop(tcp);
            continue;
        };
        let agent = agent.clone();
        let app = app.clone();
        tokio::spawn(async move {
            if let Err(why) = serve_connection(agent, app, tcp, slot).await {
                tracing::debug!(%peer, "--api-addr connection: {why}");
            }
        });
    }
}

/// The TLS server configuration of this node's API, from its current certificate.
async fn tls_config(agent: &Agent) -> Result<rustls::ServerConfig, String> {
    let member = agent
        .member
        .read()
        .await
        .clone()
        .ok_or("not part of a swarm yet")?;
    let (identity, ca) = member.tls_identity();
    pki::api_server_config(&identity, &ca).map_err(|e| e.to_string())
}

async fn serve_connection(
    agent: Arc<Agent>,
    app: Router,
    tcp: tokio::net::TcpStream,
    mut slot: Slot,
) -> Result<(), String> {
    let _ = tcp.set_nodelay(true);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&agent).await?));
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_string())?
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    let cert = pki::peer_operator(tls.get_ref().1.peer_certificates().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    slot.authenticated();
    let cert = Arc::new(cert);
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (agent, app, cert) = (agent.clone(), app.clone(), cert.clone());
        async move {
            let refused = {
                let member = agent.member.read().await.clone();
                let raft = member.as_ref().and_then(|m| m.raft());
                let state = raft.as_ref().map(|h| h.state.read().expect("state"));
                refusal(
                    state.as_ref().map(|s| s.operators()),
                    &cert,
                    now_ms(),
                    req.method(),
                    req.uri().path(),
                )
            };
            if let Some((status, message)) = refused {
                tracing::info!(operator = %cert.name, method = %req.method(), path = %req.uri().path(), "remote request refused: {message}");
                return Ok::<_, Infallible>(
                    (status, Json(Response::error(message))).into_response(),
                );
            }
            match app.oneshot(req.map(axum::body::Body::new)).await {
                Ok(r) => Ok(r),
                Err(never) => match never {},
            }
        }
    });
    hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(|e| e.to_string())
}

impl Member {
    /// The leader's side of `swarm ca client-cert` (issue, list, remove).
    pub(crate) async fn on_leader_operators(
        &self,
        h: &RaftHandle,
        req: Request,
        rid: Option<RequestId>,
    ) -> Response {
        match req {
            Request::ClientCertIssue {
                name,
                read_only,
                csr,
                expiry_secs,
            } => self
                .issue_client_cert(h, rid, &name, read_only, &csr, expiry_secs)
                .await
                .unwrap_or_else(Response::error),
            Request::ClientCertList => {
                if let Err(e) = self.read_barrier().await {
                    return Response::error(e);
                }
                let mut certs: Vec<Operator> = h
                    .state
                    .read()
                    .expect("state")
                    .operators()
                    .values()
                    .cloned()
                    .collect();
                certs.sort_by(|a, b| (&a.name, a.not_after_ms).cmp(&(&b.name, b.not_after_ms)));
                Response::ClientCerts { certs }
            }
            Request::ClientCertRemove { name } => {
                let cmd = Command::RemoveOperator {
                    name: name.clone(),
                    at_ms: now_ms(),
                };
                if let Err(e) = self.propose_as(rid, cmd).await {
                    return Response::error(e);
                }
                // A read barrier is a heartbeat round: a majority of managers learn of the
                // commit (and apply it) before the operator is told the certificate is gone.
                if let Err(e) = self.read_barrier().await {
                    tracing::debug!("after removing a client certificate: {e}");
                }
                Response::ok(name)
            }
            _ => Response::error("not a client certificate request"),
        }
    }

    async fn issue_client_cert(
        &self,
        h: &RaftHandle,
        rid: Option<RequestId>,
        name: &str,
        read_only: bool,
        csr_hex: &str,
        expiry_secs: u64,
    ) -> Result<Response, String> {
        shoal_cluster::validate_operator_name(name).map_err(|e| e.to_string())?;
        if !(MIN_CLIENT_CERT_SECS..=MAX_CLIENT_CERT_SECS).contains(&expiry_secs) {
            return Err(format!(
                "invalid expiry: between {MIN_CLIENT_CERT_SECS} s and {} days",
                MAX_CLIENT_CERT_SECS / 86_400
            ));
        }
        let csr = decode_hex(csr_hex, MAX_CSR_BYTES)?;
        let ca_pem = h
            .state
            .read()
            .expect("state")
            .cluster()
            .map(|c| c.ca_pem.clone())
            .ok_or("the swarm is not initialized")?;
        let ca = ClusterCa::from_pem(&ca_pem).map_err(|e| e.to_string())?;
        let access = if read_only {
            Access::ReadOnly
        } else {
            Access::Admin
        };
        let now = SystemTime::now();
        let cert = ca
            .issue_operator(&csr, name, access, Duration::from_secs(expiry_secs), now)
            .map_err(|e| e.to_string())?;
        let ms = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0)
        };
        let operator = Operator {
            serial: cert.serial.clone(),
            name: name.to_string(),
            read_only,
            issued_ms: ms(now),
            not_after_ms: ms(cert.not_after),
        };
        self.propose_as(
            rid,
            Command::AddOperator {
                operator: operator.clone(),
                at_ms: ms(now),
            },
        )
        .await?;
        // A retried request gets the first attempt's result without this certificate recorded.
        if !h
            .state
            .read()
            .expect("state")
            .operators()
            .contains_key(&operator.serial)
        {
            return Err(
                "a certificate was issued by an earlier attempt of this request whose answer was lost: issue another one"
                    .into(),
            );
        }
        tracing::info!(operator = %name, access = %access, serial = %operator.serial, "issued a client certificate");
        Ok(Response::ClientCert {
            cert_pem: cert.to_pem(),
            ca_pem: pki::certificate_pem(ca.cert_der()),
            operator,
        })
    }
}

/// Bytes from lowercase or uppercase hex, at most `max` of them.
fn decode_hex(text: &str, max: usize) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) || text.len() / 2 > max {
        return Err(format!(
            "the signing request must be hex, at most {max} bytes"
        ));
    }
    crate::keys::unhex(text).ok_or_else(|| "the signing request is not hex".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cert(name: &str, serial: &str, access: Access) -> OperatorCertificate {
        OperatorCertificate {
            der: Vec::new(),
            name: name.into(),
            access,
            cluster_id: pki::ClusterId::random(),
            serial: serial.into(),
            not_before: SystemTime::UNIX_EPOCH,
            not_after: SystemTime::UNIX_EPOCH,
        }
    }

    fn recorded(name: &str, serial: &str, read_only: bool) -> (String, Operator) {
        (
            serial.to_string(),
            Operator {
                serial: serial.into(),
                name: name.into(),
                read_only,
                issued_ms: 0,
                not_after_ms: 1_000,
            },
        )
    }

    #[test]
    fn requests_are_checked_against_the_recorded_certificates() {
        let ops: BTreeMap<String, Operator> =
            [recorded("alice", "0a", false), recorded("bob", "0b", true)].into();
        let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
        let alice = cert("alice", "0a", Access::Admin);
        let bob = cert("bob", "0b", Access::ReadOnly);
        assert!(refusal(Some(&ops), &alice, 10, &post, "/v1/services/create").is_none());
        assert!(refusal(Some(&ops), &alice, 10, &get, "/v1/swarm/unlock-key").is_none());
        // Read-only: reads yes, writes and secrets no.
        for (m, p) in [
            (&get, "/v1/nodes"),
            (&get, "/v1/services/web"),
            (&post, "/v1/tasks"),
            (&post, "/v1/services/web/logs"),
            (&get, "/v1/swarm/ca/client-certs"),
        ] {
            assert!(refusal(Some(&ops), &bob, 10, m, p).is_none(), "{m} {p}");
        }
        for (m, p) in [
            (&post, "/v1/services/create"),
            (&post, "/v1/services/web/update"),
            (&delete, "/v1/nodes/x"),
            (&get, "/v1/swarm/join-token/manager"),
            (&get, "/v1/swarm/unlock-key"),
            (&post, "/v1/swarm/leave"),
        ] {
            let (status, why) = refusal(Some(&ops), &bob, 10, m, p).expect("refused");
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(why.contains("read-only"), "{why}");
        }
        // Removed (or never recorded, or recorded under another name or access), expired.
        let carol = cert("carol", "0c", Access::Admin);
        let why = refusal(Some(&ops), &carol, 10, &get, "/v1/nodes")
            .unwrap()
            .1;
        assert!(why.contains("removed"), "{why}");
        let forged = cert("bob", "0b", Access::Admin);
        assert!(refusal(Some(&ops), &forged, 10, &get, "/v1/nodes").is_some());
        let why = refusal(Some(&ops), &alice, 1_001, &get, "/v1/nodes")
            .unwrap()
            .1;
        assert!(why.contains("expired"), "{why}");
        // A worker checks nothing, so it answers nothing.
        let why = refusal(None, &alice, 10, &get, "/v1/info").unwrap().1;
        assert!(why.contains("not a swarm manager"), "{why}");
    }

    #[test]
    fn connections_are_limited_per_address_until_authenticated_and_in_all() {
        let slots = Arc::new(std::sync::Mutex::new(Slots::default()));
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let mut held: Vec<Slot> = (0..MAX_HANDSHAKES_PER_IP)
            .map(|_| Slots::take(&slots, a).unwrap())
            .collect();
        // One address in the handshake cannot take more, another still can.
        assert!(Slots::take(&slots, a).is_none());
        drop(Slots::take(&slots, b).unwrap());
        // An authenticated connection no longer counts against its address.
        held[0].authenticated();
        held.push(Slots::take(&slots, a).unwrap());
        assert!(Slots::take(&slots, a).is_none());
        // Closing gives the slots back.
        held.clear();
        let s = slots.lock().unwrap();
        assert_eq!(s.open, 0);
        assert!(s.handshaking.is_empty());
        drop(s);
        // The overall limit holds whoever connects.
        let mut all = Vec::new();
        for i in 0..MAX_API_CONNECTIONS {
            let ip = std::net::IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            let mut slot = Slots::take(&slots, ip).unwrap();
            slot.authenticated();
            all.push(slot);
        }
        assert!(Slots::take(&slots, b).is_none());
        all.pop();
        assert!(Slots::take(&slots, b).is_some());
    }

    #[test]
    fn hex_round_trips_and_is_bounded() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(decode_hex(&crate::keys::hex(&bytes), 8).unwrap(), bytes);
        assert_eq!(decode_hex("ABff", 8).unwrap(), [0xab, 0xff]);
        assert!(decode_hex("abc", 8).is_err());
        assert!(decode_hex("zz", 8).is_err());
        assert!(decode_hex("é0", 8).is_err());
        assert!(decode_hex(&"00".repeat(9), 8).is_err());
    }
}
