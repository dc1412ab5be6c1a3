//! The join protocol (Swarm semantics).
//!
//! A node that joins holds a join token `SHOAL-1-<CA digest>-<secret>`. It generates its own
//! private key, which never leaves it, and sends the manager a [`JoinRequest`]: the token's
//! secret, a certificate signing request for that key, its hostname and the role it wants. The
//! manager ([`JoinAuthority`]) looks the secret up among the cluster's current tokens: the token
//! that matched decides the role, a node id is assigned, and the CA issues the certificate,
//! returned in a [`JoinResponse`] together with the CA certificate.
//!
//! The joiner connects with [`net::join_quic_config`]: the TLS handshake only completes if the
//! manager presents a manager certificate signed by a CA whose SHA-256 is the token's digest, so a
//! joiner never reveals its secret to a manager of another cluster. The request travels as one
//! request on a bidirectional stream from a connection without a client certificate, so the
//! manager sees it on its request channel with `from == None`.
//!
//! Both messages are postcard-encoded, decoded with a size bound and validated field by field;
//! bad input yields an error (and, on the manager, an error response), never a panic.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::net::{self, SetupError, Transport, TransportError};
use crate::pki::{
    self, ClusterCa, JoinToken, JoinTokens, NodeCertificate, NodeId, NodeIdentity, NodeKey,
    PkiError, Role, DEFAULT_VALIDITY,
};

/// Longest hostname accepted, in bytes (the longest DNS name).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Largest certificate signing request accepted, in bytes (a P-256 request is about 250).
pub const MAX_CSR_LEN: usize = 4096;
/// Largest certificate (node or CA) accepted in a response, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// Longest refusal reason accepted in a response, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest encoded join request accepted, checked before decoding.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;
/// Largest encoded join response accepted, checked before decoding.
pub const MAX_RESPONSE_LEN: usize = 2 * MAX_CERT_LEN + MAX_REASON_LEN + 64;

/// The refusal sent for a secret that matches no current token.
pub const INVALID_TOKEN: &str = "invalid join token";

/// Everything that can go wrong while joining or reading join messages.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A join request is malformed or one of its fields is invalid.
    #[error("invalid join request: {0}")]
    InvalidRequest(String),
    /// The manager's CA is not the one the join token names: the handshake failed before the
    /// secret was sent.
    #[error("the CA of the manager at {manager} does not match the join token: {detail}")]
    CaMismatch {
        /// The manager's address.
        manager: SocketAddr,
        /// What the TLS layer or the response showed.
        detail: String,
    },
    /// The manager answered with a refusal.
    #[error("the manager refused the join: {0}")]
    Refused(String),
    /// The manager answered with something that is not a usable join response.
    #[error("invalid join response: {0}")]
    BadResponse(String),
    /// The request could not be carried (connect, stream, timeout).
    #[error("join request failed: {0}")]
    Transport(#[from] TransportError),
    /// Generating the key or the certificate signing request failed.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The joiner's QUIC configuration could not be built.
    #[error(transparent)]
    Setup(#[from] SetupError),
}

// ---------------------------------------------------------------------------------------------
// Wire messages
// ---------------------------------------------------------------------------------------------

/// What a joining node sends to a manager.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token's secret.
    pub secret: [u8; 16],
    /// A PKCS#10 certificate signing request (DER) for the joiner's own key.
    pub csr_der: Vec<u8>,
    /// The joiner's hostname.
    pub hostname: String,
    /// The role the joiner expects; it must be the role of the token whose secret it sends.
    pub want: Role,
}

impl fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinRequest")
            .field("secret", &"<redacted>")
            .field("csr_der", &format_args!("<{} bytes>", self.csr_der.len()))
            .field("hostname", &self.hostname)
            .field("want", &self.want)
            .finish()
    }
}

impl JoinRequest {
    /// Encodes the request (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes and validates a request: at most [`MAX_REQUEST_LEN`] bytes, no trailing bytes,
    /// and every field valid (see [`JoinRequest::validate`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        let req: JoinRequest =
            decode_bounded(bytes, MAX_REQUEST_LEN).map_err(JoinError::InvalidRequest)?;
        req.validate()?;
        Ok(req)
    }

    /// Checks the fields: a valid hostname (see [`validate_hostname`]) and a non-empty CSR of at
    /// most [`MAX_CSR_LEN`] bytes.
    pub fn validate(&self) -> Result<(), JoinError> {
        validate_hostname(&self.hostname).map_err(JoinError::InvalidRequest)?;
        if self.csr_der.is_empty() {
            return Err(JoinError::InvalidRequest(
                "the certificate signing request is empty".to_string(),
            ));
        }
        if self.csr_der.len() > MAX_CSR_LEN {
            return Err(JoinError::InvalidRequest(format!(
                "the certificate signing request is {} bytes, the limit is {MAX_CSR_LEN}",
                self.csr_der.len()
            )));
        }
        Ok(())
    }
}

/// What a manager answers to a join request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The join is accepted.
    Ok {
        /// The id assigned to the new node.
        node_id: NodeId,
        /// The role of the token that matched, written in the certificate.
        role: Role,
        /// The new node's certificate (DER).
        cert_der: Vec<u8>,
        /// The cluster CA certificate (DER).
        ca_der: Vec<u8>,
    },
    /// The join is refused.
    Err {
        /// Why, in one line.
        reason: String,
    },
}

impl JoinResponse {
    /// A refusal; a reason longer than [`MAX_REASON_LEN`] bytes is cut to fit.
    pub fn refused(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON_LEN {
            let mut end = MAX_REASON_LEN - 3;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
            reason.push_str("...");
        }
        JoinResponse::Err { reason }
    }

    /// Encodes the response (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes and validates a response: at most [`MAX_RESPONSE_LEN`] bytes, no trailing bytes,
    /// non-empty certificates of at most [`MAX_CERT_LEN`] bytes, a reason of at most
    /// [`MAX_REASON_LEN`] bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, JoinError> {
        let resp: JoinResponse =
            decode_bounded(bytes, MAX_RESPONSE_LEN).map_err(JoinError::BadResponse)?;
        resp.validate()?;
        Ok(resp)
    }

    /// Checks the fields' sizes.
    pub fn validate(&self) -> Result<(), JoinError> {
        match self {
            JoinResponse::Ok {
                cert_der, ca_der, ..
            } => {
                for (what, der) in [("node certificate", cert_der), ("CA certificate", ca_der)] {
                    if der.is_empty() {
                        return Err(JoinError::BadResponse(format!("the {what} is empty")));
                    }
                    if der.len() > MAX_CERT_LEN {
                        return Err(JoinError::BadResponse(format!(
                            "the {what} is {} bytes, the limit is {MAX_CERT_LEN}",
                            der.len()
                        )));
                    }
                }
                Ok(())
            }
            JoinResponse::Err { reason } => {
                if reason.len() > MAX_REASON_LEN {
                    return Err(JoinError::BadResponse(format!(
                        "the refusal reason is {} bytes, the limit is {MAX_REASON_LEN}",
                        reason.len()
                    )));
                }
                Ok(())
            }
        }
    }
}

/// postcard decoding of exactly `bytes`, refusing more than `max` bytes before decoding.
fn decode_bounded<T: for<'de> Deserialize<'de>>(bytes: &[u8], max: usize) -> Result<T, String> {
    if bytes.len() > max {
        return Err(format!(
            "the message is {} bytes, the limit is {max}",
            bytes.len()
        ));
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| format!("does not decode: {e}"))?;
    if !rest.is_empty() {
        return Err(format!("{} trailing bytes after the message", rest.len()));
    }
    Ok(value)
}

/// Checks a hostname: 1 to [`MAX_HOSTNAME_LEN`] characters among ASCII letters, digits, `-`,
/// `_` and `.`, starting with a letter or digit, without empty labels (`..`, a trailing `.`)
/// and with labels of at most 63 characters. The error names the problem.
pub fn validate_hostname(hostname: &str) -> Result<(), String> {
    if hostname.is_empty() {
        return Err("the hostname is empty".to_string());
    }
    if hostname.len() > MAX_HOSTNAME_LEN {
        return Err(format!(
            "the hostname is {} bytes long, the limit is {MAX_HOSTNAME_LEN}",
            hostname.len()
        ));
    }
    if let Some(bad) = hostname
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the hostname contains {bad:?}; allowed are ASCII letters, digits, '-', '_' and '.'"
        ));
    }
    if !hostname.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "the hostname {hostname:?} must start with a letter or a digit"
        ));
    }
    for label in hostname.split('.') {
        if label.is_empty() {
            return Err(format!(
                "the hostname {hostname:?} has an empty label (\"..\" or a trailing '.')"
            ));
        }
        if label.len() > 63 {
            return Err(format!(
                "the hostname {hostname:?} has a label longer than 63 characters"
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Manager side
// ---------------------------------------------------------------------------------------------

/// Counters of the join requests a manager handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Joins accepted (a certificate was issued).
    pub accepted: u64,
    /// Requests that did not decode or had an invalid field.
    pub malformed: u64,
    /// Requests whose secret matched no current token.
    pub invalid_token: u64,
    /// Requests whose wanted role is not the role of their token.
    pub wrong_role: u64,
    /// Requests whose certificate signing request could not be signed.
    pub issue_failed: u64,
}

/// A node the authority let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The id assigned.
    pub node_id: NodeId,
    /// The role granted (the role of the token that matched).
    pub role: Role,
    /// The hostname the node announced (validated).
    pub hostname: String,
    /// The certificate issued.
    pub cert: NodeCertificate,
}

/// The result of handling one join request.
#[derive(Clone, Debug)]
pub struct JoinOutcome {
    /// The encoded [`JoinResponse`] to send back.
    pub response: Vec<u8>,
    /// The node that joined, when the join was accepted.
    pub joined: Option<Joined>,
}

/// A manager's side of the join protocol: the cluster CA and the current join tokens.
#[derive(Debug)]
pub struct JoinAuthority {
    /// The cluster CA that signs the certificates.
    pub ca: ClusterCa,
    /// The current join tokens; rotating one invalidates future joins with it only.
    pub tokens: JoinTokens,
    /// Validity of the certificates issued.
    pub validity: Duration,
    stats: JoinStats,
}

enum Refusal {
    Malformed(String),
    InvalidToken,
    WrongRole(String),
    IssueFailed(String),
}

impl JoinAuthority {
    /// An authority issuing certificates valid for [`DEFAULT_VALIDITY`]. The tokens must carry
    /// the digest of `ca`; otherwise no joiner holding them could ever reach this manager.
    pub fn new(ca: ClusterCa, tokens: JoinTokens) -> Result<Self, JoinError> {
        let digest = ca.digest();
        for role in [Role::Worker, Role::Manager] {
            let found = tokens.token(role).ca_digest;
            if found != digest {
                return Err(JoinError::Pki(PkiError::CaDigestMismatch {
                    expected: digest,
                    found,
                }));
            }
        }
        Ok(JoinAuthority {
            ca,
            tokens,
            validity: DEFAULT_VALIDITY,
            stats: JoinStats::default(),
        })
    }

    /// An authority with fresh worker and manager tokens for `ca`.
    pub fn with_new_tokens(ca: ClusterCa) -> Self {
        let tokens = JoinTokens::generate(ca.digest());
        JoinAuthority {
            ca,
            tokens,
            validity: DEFAULT_VALIDITY,
            stats: JoinStats::default(),
        }
    }

    /// What was handled so far.
    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// Handles one encoded [`JoinRequest`] and returns the encoded [`JoinResponse`].
    /// `new_node_id` is called only for an authorised request, to assign the new node's id.
    pub fn handle(
        &mut self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> Vec<u8> {
        self.handle_request(req_bytes, now, new_node_id).response
    }

    /// Like [`JoinAuthority::handle`], also telling which node joined (to record it in the
    /// cluster state).
    pub fn handle_request(
        &mut self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> JoinOutcome {
        match self.decide(req_bytes, now, new_node_id) {
            Ok(joined) => {
                self.stats.accepted += 1;
                tracing::info!(
                    node = %pki::node_hex(joined.node_id),
                    role = %joined.role,
                    hostname = %joined.hostname,
                    "node joined"
                );
                let response = JoinResponse::Ok {
                    node_id: joined.node_id,
                    role: joined.role,
                    cert_der: joined.cert.der.clone(),
                    ca_der: self.ca.cert_der().to_vec(),
                }
                .encode();
                JoinOutcome {
                    response,
                    joined: Some(joined),
                }
            }
            Err(refusal) => {
                let (counter, reason) = match refusal {
                    Refusal::Malformed(r) => (&mut self.stats.malformed, r),
                    Refusal::InvalidToken => {
                        (&mut self.stats.invalid_token, INVALID_TOKEN.to_string())
                    }
                    Refusal::WrongRole(r) => (&mut self.stats.wrong_role, r),
                    Refusal::IssueFailed(r) => (&mut self.stats.issue_failed, r),
                };
                *counter += 1;
                tracing::debug!(%reason, "join refused");
                JoinOutcome {
                    response: JoinResponse::refused(reason).encode(),
                    joined: None,
                }
            }
        }
    }

    fn decide(
        &self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> Result<Joined, Refusal> {
        let req = JoinRequest::decode(req_bytes).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let role = self
            .tokens
            .role_for_secret(&req.secret)
            .ok_or(Refusal::InvalidToken)?;
        if role != req.want {
            return Err(Refusal::WrongRole(format!(
                "this token joins {role}s; use the {} token",
                req.want
            )));
        }
        let node_id = new_node_id();
        let cert = self
            .ca
            .issue(&req.csr_der, node_id, role, self.validity, now)
            .map_err(|e| Refusal::IssueFailed(e.to_string()))?;
        Ok(Joined {
            node_id,
            role,
            hostname: req.hostname,
            cert,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Joiner side
// ---------------------------------------------------------------------------------------------

/// Joins the cluster through the manager at `manager`: generates this node's key, sends a CSR
/// with the token's secret, and returns the new identity and the cluster CA certificate (DER).
///
/// The connection is made with [`net::join_quic_config`]: if the manager's CA does not have the
/// token's digest the handshake fails and nothing is sent ([`JoinError::CaMismatch`]). The
/// response is checked: the CA certificate must have the token's digest, the certificate must
/// be signed by it, name the node id and role announced, be of the role wanted, and certify our
/// key.
pub async fn join(
    endpoint: &quinn::Endpoint,
    manager: SocketAddr,
    token: &JoinToken,
    hostname: &str,
    want: Role,
    timeout: Duration,
) -> Result<(NodeIdentity, Vec<u8>), JoinError> {
    validate_hostname(hostname).map_err(JoinError::InvalidRequest)?;
    let key = NodeKey::generate()?;
    let request = JoinRequest {
        secret: token.secret,
        csr_der: key.csr_der(0)?,
        hostname: hostname.to_string(),
        want,
    };
    request.validate()?;
    let client_config = net::join_quic_config(token.ca_digest)?;
    let bytes = Transport::request_once(
        endpoint,
        client_config,
        manager,
        pki::JOIN_SERVER_NAME,
        &request.encode(),
        timeout,
    )
    .await
    .map_err(|e| classify_transport_error(e, manager))?;

    let (node_id, role, cert_der, ca_der) = match JoinResponse::decode(&bytes)? {
        JoinResponse::Ok {
            node_id,
            role,
            cert_der,
            ca_der,
        } => (node_id, role, cert_der, ca_der),
        JoinResponse::Err { reason } => return Err(JoinError::Refused(printable(&reason))),
    };
    let found: [u8; 32] = Sha256::digest(&ca_der).into();
    if found != token.ca_digest {
        return Err(JoinError::CaMismatch {
            manager,
            detail: "the CA certificate in the join response does not have the token's digest"
                .to_string(),
        });
    }
    if role != want {
        return Err(JoinError::BadResponse(format!(
            "asked to join as a {want}, the manager granted {role}"
        )));
    }
    let cert = NodeCertificate::parse(&cert_der)
        .map_err(|e| JoinError::BadResponse(format!("the node certificate: {e}")))?;
    if cert.node_id != node_id || cert.role != role {
        return Err(JoinError::BadResponse(format!(
            "the certificate names node {} ({}), the response node {} ({role})",
            pki::node_hex(cert.node_id),
            cert.role,
            pki::node_hex(node_id)
        )));
    }
    verify_issued_by(&cert_der, &ca_der).map_err(JoinError::BadResponse)?;
    let identity = NodeIdentity::new(cert, key)
        .map_err(|e| JoinError::BadResponse(format!("the certificate is not for our key: {e}")))?;
    Ok((identity, ca_der))
}

/// Recognises the handshake failure of a manager whose CA does not match the token.
fn classify_transport_error(error: TransportError, manager: SocketAddr) -> JoinError {
    const MISMATCH: &str = "CA certificate digest mismatch";
    if let TransportError::Connect { reason, .. } = &error {
        if let Some(at) = reason.find(MISMATCH) {
            // Keep pki's message (both digests), without quinn's and rustls' wrapping.
            let detail = reason[at..].trim_end_matches(')').to_string();
            return JoinError::CaMismatch { manager, detail };
        }
    }
    JoinError::Transport(error)
}

/// Checks that the certificate is signed by the CA certificate's key.
fn verify_issued_by(cert_der: &[u8], ca_der: &[u8]) -> Result<(), String> {
    let (_, ca) = X509Certificate::from_der(ca_der)
        .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| format!("the node certificate does not parse: {e}"))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| format!("the node certificate is not signed by the cluster CA: {e}"))
}

/// A remote string made safe to print on one line: control characters become spaces.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{Inbound, IncomingRequest, TransportConfig};
    use crate::pki::{ClusterId, Denylist};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tokio::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(20);
    const MANAGER_ID: NodeId = 1;

    fn issue(ca: &ClusterCa, id: NodeId, role: Role) -> NodeIdentity {
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .issue(
                &key.csr_der(id).unwrap(),
                id,
                role,
                DEFAULT_VALIDITY,
                SystemTime::now(),
            )
            .unwrap();
        NodeIdentity::new(cert, key).unwrap()
    }

    /// A manager whose transport serves joins from its request channel.
    struct Manager {
        addr: SocketAddr,
        ca_der: Vec<u8>,
        tokens: JoinTokens,
        authority: Arc<Mutex<JoinAuthority>>,
        /// Every request that reached the request channel, join or not.
        requests_seen: Arc<AtomicUsize>,
        raft: mpsc::Receiver<(NodeId, Vec<u8>)>,
        /// When set, rewrites the honest response (to test the joiner's checks).
        tamper: Arc<Mutex<Option<Tamper>>>,
        _transport: Transport,
    }

    /// Rewrites a response, given the request it answers.
    type Tamper = Box<dyn Fn(&JoinRequest, JoinResponse) -> Vec<u8> + Send>;

    impl Manager {
        fn start() -> Manager {
            let ca = ClusterCa::generate(ClusterId::random()).unwrap();
            let identity = issue(&ca, MANAGER_ID, Role::Manager);
            let ca_der = ca.cert_der().to_vec();
            let (server, client) = net::quic_configs(&identity, &ca_der, Denylist::new()).unwrap();
            let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
            let addr = endpoint.local_addr().unwrap();
            let (transport, inbound) = Transport::start(
                endpoint,
                client,
                MANAGER_ID,
                ca.cluster_id(),
                Denylist::new(),
                TransportConfig::default(),
            );
            let Inbound { raft, requests, .. } = inbound;
            let authority = Arc::new(Mutex::new(JoinAuthority::with_new_tokens(ca)));
            let tokens = authority.lock().unwrap().tokens.clone();
            let requests_seen = Arc::new(AtomicUsize::new(0));
            let tamper = Arc::new(Mutex::new(None));
            tokio::spawn(serve(
                requests,
                authority.clone(),
                requests_seen.clone(),
                tamper.clone(),
            ));
            Manager {
                addr,
                ca_der,
                tokens,
                authority,
                requests_seen,
                raft,
                tamper,
                _transport: transport,
            }
        }

        fn rotate(&mut self, role: Role) {
            let mut authority = self.authority.lock().unwrap();
            authority.tokens.rotate(role);
            self.tokens = authority.tokens.clone();
        }

        fn tamper(&self, f: impl Fn(&JoinRequest, JoinResponse) -> Vec<u8> + Send + 'static) {
            *self.tamper.lock().unwrap() = Some(Box::new(f));
        }

        fn seen(&self) -> usize {
            self.requests_seen.load(Ordering::SeqCst)
        }
    }

    /// Answers join requests (from nodes without a certificate) with the authority; node ids
    /// are assigned from 100 up.
    async fn serve(
        mut requests: mpsc::Receiver<IncomingRequest>,
        authority: Arc<Mutex<JoinAuthority>>,
        seen: Arc<AtomicUsize>,
        tamper: Arc<Mutex<Option<Tamper>>>,
    ) {
        let mut next_id = 100;
        while let Some(req) = requests.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            if req.from.is_some() {
                req.respond(b"not a join".to_vec());
                continue;
            }
            let response = authority
                .lock()
                .unwrap()
                .handle(&req.body, SystemTime::now(), || {
                    next_id += 1;
                    next_id
                });
            let response = match (&*tamper.lock().unwrap(), JoinRequest::decode(&req.body)) {
                (Some(f), Ok(request)) => f(&request, JoinResponse::decode(&response).unwrap()),
                _ => response,
            };
            req.respond(response);
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn client_endpoint() -> quinn::Endpoint {
        net::udp_endpoint("127.0.0.1:0".parse().unwrap(), None).unwrap()
    }

    async fn join_with(
        manager: &Manager,
        token: &JoinToken,
        want: Role,
    ) -> Result<(NodeIdentity, Vec<u8>), JoinError> {
        join(
            &client_endpoint(),
            manager.addr,
            token,
            "node-a.example",
            want,
            WAIT,
        )
        .await
    }

    fn request(secret: [u8; 16], want: Role) -> JoinRequest {
        let key = NodeKey::generate().unwrap();
        JoinRequest {
            secret,
            csr_der: key.csr_der(0).unwrap(),
            hostname: "worker-1".to_string(),
            want,
        }
    }

    fn refusal(bytes: &[u8]) -> String {
        match JoinResponse::decode(bytes).unwrap() {
            JoinResponse::Err { reason } => reason,
            ok => panic!("expected a refusal, got {ok:?}"),
        }
    }

    #[tokio::test]
    async fn join_worker_token_yields_a_worker_cert_that_authenticates() {
        let mut manager = Manager::start();
        let token = manager.tokens.worker.clone();
        let (identity, ca_der) = join_with(&manager, &token, Role::Worker).await.unwrap();
        assert_eq!(identity.cert.role, Role::Worker);
        assert_eq!(identity.cert.node_id, 101);
        assert_eq!(ca_der, manager.ca_der);
        assert_eq!(manager.authority.lock().unwrap().stats().accepted, 1);

        // The new identity authenticates a transport of its own to the manager.
        let (server, client) = net::quic_configs(&identity, &ca_der, Denylist::new()).unwrap();
        let endpoint = net::udp_endpoint("127.0.0.1:0".parse().unwrap(), Some(server)).unwrap();
        let cluster_id = identity.cert.cluster_id;
        let (worker, _inbound) = Transport::start(
            endpoint,
            client,
            identity.cert.node_id,
            cluster_id,
            Denylist::new(),
            TransportConfig::default(),
        );
        worker.set_peer_addr(MANAGER_ID, manager.addr);
        assert!(worker.send_raft(MANAGER_ID, b"hello from the new node".to_vec()));
        let (from, body) = tokio::time::timeout(WAIT, manager.raft.recv())
            .await
            .expect("the manager receives the message")
            .unwrap();
        assert_eq!(from, identity.cert.node_id);
        assert_eq!(body, b"hello from the new node");
    }

    #[tokio::test]
    async fn join_manager_token_yields_a_manager_cert() {
        let manager = Manager::start();
        let token = manager.tokens.manager.clone();
        let (identity, ca_der) = join_with(&manager, &token, Role::Manager).await.unwrap();
        assert_eq!(identity.cert.role, Role::Manager);
        assert_eq!(ca_der, manager.ca_der);
        // The manager certificate is usable as a manager (it can serve joins itself).
        net::quic_configs(&identity, &ca_der, Denylist::new()).unwrap();
    }

    #[tokio::test]
    async fn join_worker_token_cannot_yield_a_manager_cert() {
        let manager = Manager::start();
        let token = manager.tokens.worker.clone();
        let err = join_with(&manager, &token, Role::Manager)
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, JoinError::Refused(_)), "{msg}");
        assert!(
            msg.contains("this token joins workers; use the manager token"),
            "{msg}"
        );
        // And the other way round.
        let token = manager.tokens.manager.clone();
        let err = join_with(&manager, &token, Role::Worker).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("this token joins managers; use the worker token"),
            "{err}"
        );
        let stats = manager.authority.lock().unwrap().stats();
        assert_eq!((stats.accepted, stats.wrong_role), (0, 2));
    }

    #[tokio::test]
    async fn join_ca_mismatch_fails_before_sending_anything() {
        let manager = Manager::start();
        let other = ClusterCa::generate(ClusterId::random()).unwrap();
        // The genuine secret, but the digest of another CA: the secret must not be revealed.
        let token = JoinToken {
            ca_digest: other.digest(),
            secret: manager.tokens.worker.secret,
        };
        let err = join_with(&manager, &token, Role::Worker).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, JoinError::CaMismatch { .. }), "{msg}");
        assert!(msg.contains("does not match the join token"), "{msg}");
        assert!(msg.contains(&hex(&other.digest())), "{msg}");
        assert!(!msg.contains("OtherError"), "{msg}");
        assert_eq!(manager.seen(), 0, "no request reached the manager");

        // The same secret with the right digest goes through (and is the only request seen).
        let token = manager.tokens.worker.clone();
        join_with(&manager, &token, Role::Worker).await.unwrap();
        assert_eq!(manager.seen(), 1);
    }

    #[tokio::test]
    async fn join_rotated_token_is_refused_and_the_new_one_accepted() {
        let mut manager = Manager::start();
        let old = manager.tokens.worker.clone();
        let manager_token = manager.tokens.manager.clone();
        join_with(&manager, &old, Role::Worker).await.unwrap();
        manager.rotate(Role::Worker);
        let err = join_with(&manager, &old, Role::Worker).await.unwrap_err();
        assert!(matches!(err, JoinError::Refused(_)), "{err}");
        assert!(err.to_string().contains(INVALID_TOKEN), "{err}");
        let new = manager.tokens.worker.clone();
        assert_ne!(new.secret, old.secret);
        let (identity, _) = join_with(&manager, &new, Role::Worker).await.unwrap();
        assert_eq!(identity.cert.role, Role::Worker);
        // Rotating the worker token leaves the manager token valid.
        assert_eq!(manager.tokens.manager, manager_token);
        join_with(&manager, &manager_token, Role::Manager)
            .await
            .unwrap();
        let stats = manager.authority.lock().unwrap().stats();
        assert_eq!((stats.accepted, stats.invalid_token), (3, 1));
    }

    #[tokio::test]
    async fn join_garbage_requests_get_an_error_response() {
        let manager = Manager::start();
        let garbage: Vec<Vec<u8>> = vec![
            vec![],
            vec![0xff; 3],
            vec![0; 16],
            vec![0xff; MAX_REQUEST_LEN + 1],
            b"SHOAL-1-not-a-request".to_vec(),
        ];
        for body in &garbage {
            let response = Transport::request_once(
                &client_endpoint(),
                net::join_quic_config(manager.tokens.worker.ca_digest).unwrap(),
                manager.addr,
                pki::JOIN_SERVER_NAME,
                body,
                WAIT,
            )
            .await
            .unwrap();
            let reason = refusal(&response);
            assert!(reason.starts_with("invalid join request"), "{reason}");
        }
        let stats = manager.authority.lock().unwrap().stats();
        assert_eq!(stats.malformed, garbage.len() as u64);
        assert_eq!(stats.accepted, 0);
    }

    #[tokio::test]
    async fn join_checks_the_response() {
        let manager = Manager::start();
        let token = manager.tokens.worker.clone();
        let authority = manager.authority.clone();
        let cluster_id = authority.lock().unwrap().ca.cluster_id();
        let impostor = Arc::new(ClusterCa::generate(cluster_id).unwrap());

        let accepted = |resp: JoinResponse| match resp {
            JoinResponse::Ok {
                node_id,
                role,
                cert_der,
                ca_der,
            } => (node_id, role, cert_der, ca_der),
            other => panic!("expected an acceptance, got {other:?}"),
        };
        let mut cases: Vec<(&str, Tamper)> = Vec::new();
        // The CA certificate sent back is another one.
        let other = impostor.clone();
        cases.push((
            "does not have the token's digest",
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
        // A certificate for our key, signed by an impostor CA of the same cluster id.
        let other = impostor.clone();
        cases.push((
            "not signed by the cluster CA",
            Box::new(move |req, resp| {
                let (node_id, role, _, ca_der) = accepted(resp);
                let cert = other
                    .issue(
                        &req.csr_der,
                        node_id,
                        role,
                        DEFAULT_VALIDITY,
                        SystemTime::now(),
                    )
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
        // A genuine certificate, for another key.
        let auth = authority.clone();
        cases.push((
            "the certificate is not for our key",
            Box::new(move |_, resp| {
                let (node_id, role, _, ca_der) = accepted(resp);
                let stranger = NodeKey::generate().unwrap().csr_der(0).unwrap();
                let cert = auth
                    .lock()
                    .unwrap()
                    .ca
                    .issue(
                        &stranger,
                        node_id,
                        role,
                        DEFAULT_VALIDITY,
                        SystemTime::now(),
                    )
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
        // The response announces another node id than the certificate's.
        cases.push((
            "the certificate names node",
            Box::new(move |_, resp| {
                let (node_id, role, cert_der, ca_der) = accepted(resp);
                JoinResponse::Ok {
                    node_id: node_id + 1,
                    role,
                    cert_der,
                    ca_der,
                }
                .encode()
            }),
        ));
        // The response grants another role than the one asked for.
        cases.push((
            "asked to join as a worker, the manager granted manager",
            Box::new(move |_, resp| {
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
        // Not a join response at all.
        cases.push((
            "invalid join response",
            Box::new(|_, _| b"\xff\xff\xff".to_vec()),
        ));
        // A refusal with terminal escapes is printed harmlessly.
        cases.push((
            "the manager refused the join: no  [2J way",
            Box::new(|_, _| JoinResponse::refused("no\n\u{1b}[2J way").encode()),
        ));

        for (expected, tamper) in cases {
            *manager.tamper.lock().unwrap() = Some(tamper);
            let err = join_with(&manager, &token, Role::Worker).await.unwrap_err();
            assert!(err.to_string().contains(expected), "{expected}: {err}");
        }
        manager.tamper(|_, resp| resp.encode());
        join_with(&manager, &token, Role::Worker).await.unwrap();
    }

    #[test]
    fn join_authority_refusals_name_the_problem() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let mut authority = JoinAuthority::with_new_tokens(ca);
        let worker = authority.tokens.worker.secret;
        let now = SystemTime::now();
        let mut calls = 0;
        let mut id = || {
            calls += 1;
            7
        };

        let reason =
            refusal(&authority.handle(&request([9; 16], Role::Worker).encode(), now, &mut id));
        assert_eq!(reason, INVALID_TOKEN);

        let mut bad = request(worker, Role::Worker);
        bad.hostname = "bad host".to_string();
        let reason = refusal(&authority.handle(&bad.encode(), now, &mut id));
        assert!(reason.contains("the hostname contains ' '"), "{reason}");

        let mut bad = request(worker, Role::Worker);
        bad.csr_der = vec![0x30; MAX_CSR_LEN + 1];
        let reason = refusal(&authority.handle(&bad.encode(), now, &mut id));
        assert!(reason.contains("limit is 4096"), "{reason}");

        let mut bad = request(worker, Role::Worker);
        bad.csr_der = vec![0x30, 0x03, 1, 2, 3];
        let reason = refusal(&authority.handle(&bad.encode(), now, &mut id));
        assert!(
            reason.contains("invalid certificate signing request"),
            "{reason}"
        );

        let mut trailing = request(worker, Role::Worker).encode();
        trailing.push(0);
        let reason = refusal(&authority.handle(&trailing, now, &mut id));
        assert!(reason.contains("1 trailing bytes"), "{reason}");

        // Only the request with a bad CSR was authorised far enough to be given an id.
        assert_eq!(calls, 1);
        let outcome = authority.handle_request(&request(worker, Role::Worker).encode(), now, || 8);
        let joined = outcome.joined.unwrap();
        assert_eq!(
            (joined.node_id, joined.role, joined.hostname.as_str()),
            (8, Role::Worker, "worker-1")
        );
        assert_eq!(
            authority.stats(),
            JoinStats {
                accepted: 1,
                malformed: 3,
                invalid_token: 1,
                wrong_role: 0,
                issue_failed: 1,
            }
        );
    }

    #[test]
    fn join_authority_requires_tokens_of_its_ca() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let other = ClusterCa::generate(ClusterId::random()).unwrap();
        let err = JoinAuthority::new(ca, JoinTokens::generate(other.digest())).unwrap_err();
        assert!(err.to_string().contains("digest mismatch"), "{err}");
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let tokens = JoinTokens::generate(ca.digest());
        JoinAuthority::new(ca, tokens).unwrap();
    }

    #[test]
    fn join_hostname_validation() {
        for good in [
            "a",
            "node-1",
            "n1.example.com",
            "web_01",
            "a.b-c.d",
            &"a".repeat(63),
        ] {
            validate_hostname(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        let long = [
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
            "e".repeat(10),
        ]
        .join(".");
        for (bad, problem) in [
            ("", "empty"),
            ("-node", "must start with a letter or a digit"),
            (".node", "must start"),
            ("a..b", "empty label"),
            ("a..", "empty label"),
            ("a..b.", "empty label"),
            ("host.", "empty label"),
            ("nodé", "contains 'é'"),
            ("a\nb", "contains '\\n'"),
            (&"a".repeat(64), "longer than 63"),
            (&long, "the limit is 253"),
        ] {
            let err = validate_hostname(bad).unwrap_err();
            assert!(err.contains(problem), "{bad:?}: {err}");
        }
    }

    #[test]
    fn join_messages_round_trip_and_refuse_bad_sizes() {
        let req = request([3; 16], Role::Manager);
        assert_eq!(JoinRequest::decode(&req.encode()).unwrap(), req);
        assert!(
            !format!("{req:?}").contains("3, 3"),
            "the secret is redacted"
        );

        let ok = JoinResponse::Ok {
            node_id: 5,
            role: Role::Worker,
            cert_der: vec![1; 10],
            ca_der: vec![2; 10],
        };
        assert_eq!(JoinResponse::decode(&ok.encode()).unwrap(), ok);
        let err = JoinResponse::refused("x".repeat(5000));
        let JoinResponse::Err { reason } = &err else {
            unreachable!()
        };
        assert_eq!(reason.len(), MAX_REASON_LEN);
        assert_eq!(JoinResponse::decode(&err.encode()).unwrap(), err);
        let multibyte = JoinResponse::refused("é".repeat(1000));
        assert!(JoinResponse::decode(&multibyte.encode()).is_ok());

        let too_long = JoinResponse::Err {
            reason: "x".repeat(MAX_REASON_LEN + 1),
        };
        assert!(JoinResponse::decode(&too_long.encode()).is_err());
        let empty_cert = JoinResponse::Ok {
            node_id: 5,
            role: Role::Worker,
            cert_der: vec![],
            ca_der: vec![2; 10],
        };
        let e = JoinResponse::decode(&empty_cert.encode()).unwrap_err();
        assert!(e.to_string().contains("node certificate is empty"), "{e}");
        assert!(JoinResponse::decode(&vec![0; MAX_RESPONSE_LEN + 1]).is_err());
        assert!(JoinResponse::decode(&[7]).is_err());
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a [2Jb ");
    }
}
