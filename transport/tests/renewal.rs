//! Certificate renewal on real UDP sockets (loopback): a member renews over its authenticated
//! connection to a manager and gets a certificate for a new key with the same node id and role;
//! callers without a certificate cannot renew, members cannot join again, denied nodes cannot
//! renew, garbage is answered with an error, and the node checks what it gets back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::SeedableRng;
use shoal_transport::join::{
    self, renewal_due, JoinAuthority, JoinError, JoinRequest, JoinResponse, PkiRequest,
    RenewRequest, RenewalPlan,
};
use shoal_transport::net::{self, Inbound, IncomingRequest, Transport, TransportConfig};
use shoal_transport::pki::{
    self, ClusterCa, ClusterId, Denylist, JoinTokens, NodeCertificate, NodeId, NodeIdentity,
    NodeKey, Role, DEFAULT_VALIDITY,
};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const MANAGER_ID: NodeId = 1;
const WORKER_ID: NodeId = 7;

/// Rewrites the honest response to a renewal, given the request it answers.
type Tamper = Box<dyn Fn(&RenewRequest, JoinResponse) -> Vec<u8> + Send>;

/// A manager whose transport answers joins and renewals from its request channel.
struct Manager {
    addr: SocketAddr,
    ca_der: Vec<u8>,
    tokens: JoinTokens,
    authority: Arc<Mutex<JoinAuthority>>,
    transport: Transport,
    raft: mpsc::Receiver<(NodeId, Vec<u8>)>,
    tamper: Arc<Mutex<Option<Tamper>>>,
    /// Node ids handed out (joins only).
    ids_assigned: Arc<AtomicUsize>,
    /// Requests that reached the request channel.
    requests_seen: Arc<AtomicUsize>,
}

impl Manager {
    fn start() -> Manager {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let identity = issue(&ca, MANAGER_ID, Role::Manager, SystemTime::now());
        let ca_der = ca.cert_der().to_vec();
        // One denylist for the transport (handshakes) and the authority (renewals).
        let denylist = Denylist::new();
        let (server, client) = net::quic_configs(&identity, &ca_der, denylist.clone()).unwrap();
        let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let (transport, inbound) = Transport::start(
            endpoint,
            client,
            MANAGER_ID,
            ca.cluster_id(),
            denylist.clone(),
            TransportConfig::default(),
        );
        let Inbound { raft, requests, .. } = inbound;
        let authority = JoinAuthority::with_new_tokens(ca).with_denylist(denylist);
        let tokens = authority.tokens.clone();
        let authority = Arc::new(Mutex::new(authority));
        let tamper = Arc::new(Mutex::new(None));
        let ids_assigned = Arc::new(AtomicUsize::new(0));
        let requests_seen = Arc::new(AtomicUsize::new(0));
        tokio::spawn(serve(
            requests,
            authority.clone(),
            tamper.clone(),
            ids_assigned.clone(),
            requests_seen.clone(),
        ));
        Manager {
            addr,
            ca_der,
            tokens,
            authority,
            transport,
            raft,
            tamper,
            ids_assigned,
            requests_seen,
        }
    }

    /// Issues a certificate with the cluster CA directly (as if the node had joined earlier).
    fn issue_at(&self, id: NodeId, role: Role, now: SystemTime) -> NodeIdentity {
        issue(&self.authority.lock().unwrap().ca, id, role, now)
    }

    fn tamper(&self, f: impl Fn(&RenewRequest, JoinResponse) -> Vec<u8> + Send + 'static) {
        *self.tamper.lock().unwrap() = Some(Box::new(f));
    }

    fn stats(&self) -> join::JoinStats {
        self.authority.lock().unwrap().stats()
    }

    /// Starts a transport for `identity` that knows this manager's address.
    fn member(&self, identity: &NodeIdentity, cfg: TransportConfig) -> (Transport, Inbound) {
        let (server, client) = net::quic_configs(identity, &self.ca_der, Denylist::new()).unwrap();
        let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
        let (transport, inbound) = Transport::start(
            endpoint,
            client,
            identity.cert.node_id,
            identity.cert.cluster_id,
            Denylist::new(),
            cfg,
        );
        transport.set_peer_addr(MANAGER_ID, self.addr);
        (transport, inbound)
    }
}

/// Answers every request with the authority: joins from callers without a certificate,
/// renewals from members. Node ids for joins are assigned from 100 up.
async fn serve(
    mut requests: mpsc::Receiver<IncomingRequest>,
    authority: Arc<Mutex<JoinAuthority>>,
    tamper: Arc<Mutex<Option<Tamper>>>,
    ids_assigned: Arc<AtomicUsize>,
    requests_seen: Arc<AtomicUsize>,
) {
    while let Some(req) = requests.recv().await {
        requests_seen.fetch_add(1, Ordering::SeqCst);
        let response = authority.lock().unwrap().handle_any(
            req.from.as_ref(),
            &req.body,
            SystemTime::now(),
            || 100 + ids_assigned.fetch_add(1, Ordering::SeqCst) as NodeId + 1,
        );
        let response = match (&*tamper.lock().unwrap(), PkiRequest::decode(&req.body)) {
            (Some(f), Ok(PkiRequest::Renew(renewal))) if req.from.is_some() => {
                f(&renewal, JoinResponse::decode(&response).unwrap())
            }
            _ => response,
        };
        req.respond(response);
    }
}

fn issue(ca: &ClusterCa, id: NodeId, role: Role, now: SystemTime) -> NodeIdentity {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue(&key.csr_der(id).unwrap(), id, role, DEFAULT_VALIDITY, now)
        .unwrap();
    NodeIdentity::new(cert, key).unwrap()
}

fn refusal(bytes: &[u8]) -> String {
    match JoinResponse::decode(bytes).unwrap() {
        JoinResponse::Err { reason } => reason,
        ok => panic!("expected a refusal, got {ok:?}"),
    }
}

fn granted(bytes: &[u8]) -> NodeCertificate {
    match JoinResponse::decode(bytes).unwrap() {
        JoinResponse::Ok {
            node_id,
            role,
            cert_der,
            ..
        } => {
            let cert = NodeCertificate::parse(&cert_der).unwrap();
            assert_eq!((cert.node_id, cert.role), (node_id, role));
            cert
        }
        JoinResponse::Err { reason } => panic!("expected a certificate, got {reason:?}"),
    }
}

fn renewal(csr_der: Vec<u8>) -> Vec<u8> {
    PkiRequest::Renew(RenewRequest { csr_der }).encode()
}

fn quick() -> TransportConfig {
    TransportConfig {
        request_timeout: Duration::from_secs(3),
        ..TransportConfig::default()
    }
}

async fn expect_raft(manager: &mut Manager, from: NodeId, body: &[u8]) {
    let (sender, got) = tokio::time::timeout(WAIT, manager.raft.recv())
        .await
        .expect("the manager receives the message")
        .unwrap();
    assert_eq!((sender, got.as_slice()), (from, body));
}

#[tokio::test]
async fn renew_worker_gets_a_fresh_cert_that_authenticates() {
    let mut manager = Manager::start();
    // A worker whose certificate was issued 50 days ago: it is in its renewal window.
    let issued = SystemTime::now() - 50 * DAY;
    let old = manager.issue_at(WORKER_ID, Role::Worker, issued);
    let (transport, _inbound) = manager.member(&old, TransportConfig::default());

    let before = SystemTime::now();
    let new = join::renew(&transport, MANAGER_ID, &old, &manager.ca_der)
        .await
        .unwrap();
    let (cert, was) = (&new.cert, &old.cert);
    assert_eq!(
        (cert.node_id, cert.role, cert.cluster_id),
        (was.node_id, was.role, was.cluster_id)
    );
    assert_ne!(new.key.key_der(), old.key.key_der(), "a new key");
    assert_ne!(cert.der, was.der);
    // A fresh validity: from about now, for the default validity.
    assert!(cert.not_before > was.not_before + 49 * DAY);
    assert!(cert.not_after >= before - Duration::from_secs(1) + DEFAULT_VALIDITY);
    assert!(cert.not_after <= SystemTime::now() + DEFAULT_VALIDITY);
    assert!(cert.is_valid_at(SystemTime::now()));
    let stats = manager.stats();
    assert_eq!((stats.renewed, stats.accepted), (1, 0));
    assert_eq!(manager.ids_assigned.load(Ordering::SeqCst), 0);

    // A transport built from the new identity talks to the manager...
    drop(transport);
    let (renewed, _inbound) = manager.member(&new, TransportConfig::default());
    assert!(renewed.send_raft(MANAGER_ID, b"renewed".to_vec()));
    expect_raft(&mut manager, WORKER_ID, b"renewed").await;
    // ... and the manager sees the new certificate: the next renewal starts from it.
    let newer = join::renew(&renewed, MANAGER_ID, &new, &manager.ca_der)
        .await
        .unwrap();
    assert_eq!(
        (newer.cert.node_id, newer.cert.role),
        (WORKER_ID, Role::Worker)
    );
    assert_eq!(manager.stats().renewed, 2);
}

#[tokio::test]
async fn renew_after_join_keeps_the_joined_id_and_role() {
    let manager = Manager::start();
    for (token, role) in [
        (manager.tokens.worker.clone(), Role::Worker),
        (manager.tokens.manager.clone(), Role::Manager),
    ] {
        let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let (mut identity, ca_der) =
            join::join(&endpoint, manager.addr, &token, "node-r", role, WAIT)
                .await
                .unwrap();
        let id = identity.cert.node_id;
        for _ in 0..2 {
            let (transport, _inbound) = manager.member(&identity, TransportConfig::default());
            identity = join::renew(&transport, MANAGER_ID, &identity, &ca_der)
                .await
                .unwrap();
            assert_eq!((identity.cert.node_id, identity.cert.role), (id, role));
        }
    }
    let stats = manager.stats();
    assert_eq!((stats.accepted, stats.renewed), (2, 4));
}

#[tokio::test]
async fn renew_cannot_change_the_role_nor_the_id() {
    let manager = Manager::start();
    let worker = manager.issue_at(WORKER_ID, Role::Worker, SystemTime::now());
    let (transport, _inbound) = manager.member(&worker, TransportConfig::default());

    // The CSR asks for the manager's id: the certificate still names the worker.
    let key = NodeKey::generate().unwrap();
    let response = transport
        .request(MANAGER_ID, &renewal(key.csr_der(MANAGER_ID).unwrap()))
        .await
        .unwrap();
    let cert = granted(&response);
    assert_eq!((cert.node_id, cert.role), (WORKER_ID, Role::Worker));
    NodeIdentity::new(cert, key).unwrap();

    // There is no field to ask for a role; bytes appended to smuggle one are refused.
    let mut smuggled = renewal(NodeKey::generate().unwrap().csr_der(0).unwrap());
    smuggled.push(0); // Role::Manager's tag
    let response = transport.request(MANAGER_ID, &smuggled).await.unwrap();
    let reason = refusal(&response);
    assert!(reason.contains("trailing bytes"), "{reason}");

    // A worker's renewal always yields a worker, renewal after renewal.
    let mut identity = worker;
    let mut transport = transport;
    for _ in 0..3 {
        identity = join::renew(&transport, MANAGER_ID, &identity, &manager.ca_der)
            .await
            .unwrap();
        assert_eq!(
            (identity.cert.node_id, identity.cert.role),
            (WORKER_ID, Role::Worker)
        );
        transport = manager.member(&identity, TransportConfig::default()).0;
    }
    // And a manager's stays a manager.
    let other = manager.issue_at(2, Role::Manager, SystemTime::now());
    let (transport, _inbound) = manager.member(&other, TransportConfig::default());
    let renewed = join::renew(&transport, MANAGER_ID, &other, &manager.ca_der)
        .await
        .unwrap();
    assert_eq!(
        (renewed.cert.node_id, renewed.cert.role),
        (2, Role::Manager)
    );
}

#[tokio::test]
async fn renew_from_a_caller_without_certificate_is_refused() {
    let manager = Manager::start();
    let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap();
    let csr = NodeKey::generate().unwrap().csr_der(WORKER_ID).unwrap();
    let response = Transport::request_once(
        &endpoint,
        net::join_quic_config(manager.tokens.worker.ca_digest).unwrap(),
        manager.addr,
        pki::JOIN_SERVER_NAME,
        &renewal(csr),
        WAIT,
    )
    .await
    .unwrap();
    let reason = refusal(&response);
    assert!(
        reason.contains("a node without a certificate may only join"),
        "{reason}"
    );
    let stats = manager.stats();
    assert_eq!((stats.renewed, stats.unauthorized), (0, 1));
}

#[tokio::test]
async fn renew_member_sending_a_join_is_refused() {
    let manager = Manager::start();
    let worker = manager.issue_at(WORKER_ID, Role::Worker, SystemTime::now());
    let (transport, _inbound) = manager.member(&worker, TransportConfig::default());
    // A genuine manager token, over the worker's authenticated connection.
    let join = PkiRequest::Join(JoinRequest {
        secret: manager.tokens.manager.secret,
        csr_der: NodeKey::generate().unwrap().csr_der(0).unwrap(),
        hostname: "sneaky".to_string(),
        want: Role::Manager,
    });
    let response = transport.request(MANAGER_ID, &join.encode()).await.unwrap();
    let reason = refusal(&response);
    assert!(
        reason.contains("node 0000000000000007 is already a member"),
        "{reason}"
    );
    let stats = manager.stats();
    assert_eq!((stats.accepted, stats.unauthorized), (0, 1));
    assert_eq!(manager.ids_assigned.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn renew_denied_node_cannot_renew() {
    let manager = Manager::start();
    let worker = manager.issue_at(WORKER_ID, Role::Worker, SystemTime::now());
    let (transport, _inbound) = manager.member(&worker, quick());
    let renewed = join::renew(&transport, MANAGER_ID, &worker, &manager.ca_der)
        .await
        .unwrap();
    assert_eq!(manager.requests_seen.load(Ordering::SeqCst), 1);

    // Removing the node closes its connections; it cannot even connect again, with the old
    // certificate or the renewed one.
    manager.transport.deny(WORKER_ID);
    let (fresh, _inbound) = manager.member(&renewed, quick());
    let err = join::renew(&fresh, MANAGER_ID, &renewed, &manager.ca_der)
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Transport(_)), "{err}");
    let err = join::renew(&transport, MANAGER_ID, &worker, &manager.ca_der)
        .await
        .unwrap_err();
    assert!(matches!(err, JoinError::Transport(_)), "{err}");
    // Refused during the handshake: no request reached the manager's request channel.
    assert_eq!(manager.requests_seen.load(Ordering::SeqCst), 1);
    assert_eq!(manager.stats().renewed, 1);
}

#[tokio::test]
async fn renew_garbage_gets_an_error_response() {
    let manager = Manager::start();
    let worker = manager.issue_at(WORKER_ID, Role::Worker, SystemTime::now());
    let (transport, _inbound) = manager.member(&worker, TransportConfig::default());
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![1],
        vec![2, 0, 0],
        vec![1; join::MAX_REQUEST_LEN + 1],
        b"SHOAL-1-not-a-request".to_vec(),
        renewal(vec![0x30, 0x03, 1, 2, 3]),
    ];
    for body in &garbage {
        let response = transport.request(MANAGER_ID, body).await.unwrap();
        let reason = refusal(&response);
        assert!(
            reason.starts_with("invalid renewal request")
                || reason.starts_with("invalid certificate signing request"),
            "{reason}"
        );
    }
    let stats = manager.stats();
    assert_eq!(stats.malformed + stats.issue_failed, garbage.len() as u64);
    assert_eq!(stats.renewed, 0);
    // The connection is still good for a real renewal.
    join::renew(&transport, MANAGER_ID, &worker, &manager.ca_der)
        .await
        .unwrap();
}

#[tokio::test]
async fn renew_checks_the_response() {
    let manager = Manager::start();
    let worker = manager.issue_at(WORKER_ID, Role::Worker, SystemTime::now());
    let (transport, _inbound) = manager.member(&worker, TransportConfig::default());
    let authority = manager.authority.clone();
    let cluster_id = authority.lock().unwrap().ca.cluster_id();
    let impostor = Arc::new(ClusterCa::generate(cluster_id).unwrap());
    let foreign = Arc::new(ClusterCa::generate(ClusterId::random()).unwrap());

    /// Issues with the genuine CA for the request's key, with the given id, role and period.
    fn reissue(
        authority: &Mutex<JoinAuthority>,
        req: &RenewRequest,
        id: NodeId,
        role: Role,
        period: (SystemTime, SystemTime),
    ) -> Vec<u8> {
        authority
            .lock()
            .unwrap()
            .ca
            .issue_with_validity(&req.csr_der, id, role, period.0, period.1)
            .unwrap()
            .der
    }
    fn accepted(resp: JoinResponse) -> (NodeId, Role, Vec<u8>, Vec<u8>) {
        match resp {
            JoinResponse::Ok {
                node_id,
                role,
                cert_der,
                ca_der,
            } => (node_id, role, cert_der, ca_der),
            other => panic!("expected an acceptance, got {other:?}"),
        }
    }
    let now = SystemTime::now();
    let valid = (now - Duration::from_secs(60), now + DEFAULT_VALIDITY);

    let mut cases: Vec<(String, Tamper)> = Vec::new();
    // A manager certificate for our key, announced as such.
    let auth = authority.clone();
    cases.push((
        "has role manager and the response manager, node 0000000000000007 asked for worker"
            .to_string(),
        Box::new(move |req, resp| {
            let (node_id, _, _, ca_der) = accepted(resp);
            let cert_der = reissue(&auth, req, node_id, Role::Manager, valid);
            JoinResponse::Ok {
                node_id,
                role: Role::Manager,
                cert_der,
                ca_der,
            }
            .encode()
        }),
    ));
    // A genuine certificate with the honest role, but the response says manager.
    cases.push((
        "the response manager".to_string(),
        Box::new(|_, resp| {
            let (node_id, _, cert_der, ca_der) = accepted(resp);
            JoinResponse::Ok {
                node_id,
                role: Role::Manager,
                cert_der,
                ca_der,
            }
            .encode()
        }),
    ));
    // A certificate for another node id.
    let auth = authority.clone();
    cases.push((
        "the certificate names node 0000000000000008".to_string(),
        Box::new(move |req, resp| {
            let (_, role, _, ca_der) = accepted(resp);
            JoinResponse::Ok {
                node_id: 8,
                role,
                cert_der: reissue(&auth, req, 8, role, valid),
                ca_der,
            }
            .encode()
        }),
    ));
    // Signed by an impostor CA of the same cluster id.
    let other = impostor.clone();
    cases.push((
        "not signed by the cluster CA".to_string(),
        Box::new(move |req, resp| {
            let (node_id, role, _, ca_der) = accepted(resp);
            let cert = other
                .issue_with_validity(&req.csr_der, node_id, role, valid.0, valid.1)
                .unwrap();
            JoinResponse::Ok {
                node_id,
                role,
                cert_der: cert.der,
                ca_der,
            }
            .encode()
        }),
    ));
    // A certificate of another cluster.
    let other = foreign.clone();
    cases.push((
        format!("belongs to cluster {}", foreign.cluster_id()),
        Box::new(move |req, resp| {
            let (node_id, role, _, ca_der) = accepted(resp);
            let cert = other
                .issue_with_validity(&req.csr_der, node_id, role, valid.0, valid.1)
                .unwrap();
            JoinResponse::Ok {
                node_id,
                role,
                cert_der: cert.der,
                ca_der,
            }
            .encode()
        }),
    ));
    // The response carries another CA certificate.
    let other = impostor.clone();
    cases.push((
        "the CA certificate in the response is not the cluster's".to_string(),
        Box::new(move |_, resp| {
            let (node_id, role, cert_der, _) = accepted(resp);
            JoinResponse::Ok {
                node_id,
                role,
                cert_der,
                ca_der: other.cert_der().to_vec(),
            }
            .encode()
        }),
    ));
    // A genuine certificate for someone else's key.
    let auth = authority.clone();
    cases.push((
        "the certificate is not for our new key".to_string(),
        Box::new(move |_, resp| {
            let (node_id, role, _, ca_der) = accepted(resp);
            let stranger = RenewRequest {
                csr_der: NodeKey::generate().unwrap().csr_der(0).unwrap(),
            };
            JoinResponse::Ok {
                node_id,
                role,
                cert_der: reissue(&auth, &stranger, node_id, role, valid),
                ca_der,
            }
            .encode()
        }),
    ));
    // A certificate that has already expired.
    let auth = authority.clone();
    cases.push((
        "the new certificate has already expired".to_string(),
        Box::new(move |req, resp| {
            let (node_id, role, _, ca_der) = accepted(resp);
            let past = (now - 2 * DAY, now - DAY);
            JoinResponse::Ok {
                node_id,
                role,
                cert_der: reissue(&auth, req, node_id, role, past),
                ca_der,
            }
            .encode()
        }),
    ));
    // Not a response at all.
    cases.push((
        "invalid renewal response".to_string(),
        Box::new(|_, _| b"\xff\xff\xff".to_vec()),
    ));
    // A refusal with terminal escapes is printed harmlessly.
    cases.push((
        "the manager refused the renewal: no  [2J way".to_string(),
        Box::new(|_, _| JoinResponse::refused("no\n\u{1b}[2J way").encode()),
    ));

    for (expected, tamper) in cases {
        *manager.tamper.lock().unwrap() = Some(tamper);
        let err = join::renew(&transport, MANAGER_ID, &worker, &manager.ca_der)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&expected), "{expected}: {err}");
    }
    manager.tamper(|_, resp| resp.encode());
    join::renew(&transport, MANAGER_ID, &worker, &manager.ca_der)
        .await
        .unwrap();

    // The node refuses to ask with an identity that is not its transport's, or expired.
    let stranger = manager.issue_at(9, Role::Worker, now);
    let err = join::renew(&transport, MANAGER_ID, &stranger, &manager.ca_der)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("the transport authenticates node"),
        "{err}"
    );
    let key = NodeKey::generate().unwrap();
    let expired = authority
        .lock()
        .unwrap()
        .ca
        .issue_with_validity(
            &key.csr_der(WORKER_ID).unwrap(),
            WORKER_ID,
            Role::Worker,
            now - 2 * DAY,
            now - DAY,
        )
        .unwrap();
    let expired = NodeIdentity::new(expired, key).unwrap();
    let err = join::renew(&transport, MANAGER_ID, &expired, &manager.ca_der)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("must join again"), "{err}");
}

#[test]
fn renew_plan_falls_between_45_and_72_days() {
    let ca = ClusterCa::generate(ClusterId::random()).unwrap();
    let key = NodeKey::generate().unwrap();
    let not_before = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let cert = ca
        .issue_with_validity(
            &key.csr_der(WORKER_ID).unwrap(),
            WORKER_ID,
            Role::Worker,
            not_before,
            not_before + DEFAULT_VALIDITY,
        )
        .unwrap();
    assert_eq!(DEFAULT_VALIDITY, 90 * DAY);
    let (earliest, latest) = (not_before + 45 * DAY, not_before + 72 * DAY);
    let mut rng = StdRng::seed_from_u64(7);
    let plans: Vec<SystemTime> = (0..2000)
        .map(|_| RenewalPlan::for_cert(&cert, &mut rng))
        .collect();
    for &plan in &plans {
        assert!(earliest <= plan && plan <= latest, "{plan:?}");
        assert!(!renewal_due(&cert, plan - Duration::from_secs(1), plan));
        assert!(renewal_due(&cert, plan, plan));
    }
    // Spread over the whole window, not bunched up.
    assert!(plans.iter().any(|&p| p < earliest + 2 * DAY));
    assert!(plans.iter().any(|&p| p > latest - 2 * DAY));

    // A plan outside the window (made for another certificate) is held inside it.
    let stale = not_before - DAY;
    assert!(!renewal_due(
        &cert,
        earliest - Duration::from_secs(1),
        stale
    ));
    assert!(renewal_due(&cert, earliest, stale));
    let far = not_before + 10 * DEFAULT_VALIDITY;
    assert!(!renewal_due(&cert, latest - Duration::from_secs(1), far));
    assert!(renewal_due(&cert, latest, far));
    // An expired certificate is due (the renewal will tell the node to join again).
    assert!(renewal_due(&cert, not_before + 100 * DAY, far));
}
