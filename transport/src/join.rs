//! The join and renewal protocols (Swarm semantics).
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
//! A member renews its certificate before it expires (see [`RenewalPlan`]: at a random moment
//! between 50% and 80% of its validity). It generates a **new** key and sends a [`RenewRequest`]
//! (a certificate signing request only) over its authenticated connection, so the manager sees
//! it with `from == Some(current certificate)`. The manager issues a certificate with the node
//! id and role of that current certificate: a renewal can neither change the id nor raise the
//! role. It refuses callers of another cluster, with an expired certificate, or denied.
//!
//! On the wire both requests are a [`PkiRequest`], whose tag tells a join from a renewal; a
//! caller without a certificate may only join and a caller with one may only renew. Both kinds
//! are answered with a [`JoinResponse`]. Messages are postcard-encoded, decoded with a size bound
//! and validated field by field; bad input yields an error (and, on the manager, an error
//! response), never a panic.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::net::{self, SetupError, Transport, TransportError};
use crate::pki::{
    self, ClusterCa, Denylist, JoinToken, JoinTokens, NodeCertificate, NodeId, NodeIdentity,
    NodeKey, PkiError, Role, DEFAULT_VALIDITY,
};

/// Longest hostname accepted, in bytes (the longest DNS name).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Largest certificate signing request accepted, in bytes (a P-256 request is about 250).
pub const MAX_CSR_LEN: usize = 4096;
/// Largest certificate (node or CA) accepted in a response, in bytes.
pub const MAX_CERT_LEN: usize = 16 * 1024;
/// Longest refusal reason accepted in a response, in bytes.
pub const MAX_REASON_LEN: usize = 1024;
/// Largest encoded request ([`PkiRequest`], join or renewal) accepted, checked before decoding.
pub const MAX_REQUEST_LEN: usize = 8 * 1024;
/// Largest encoded response (to a join or a renewal) accepted, checked before decoding.
pub const MAX_RESPONSE_LEN: usize = 2 * MAX_CERT_LEN + MAX_REASON_LEN + 64;

/// The refusal sent for a secret that matches no current token.
pub const INVALID_TOKEN: &str = "invalid join token";

/// Everything that can go wrong while joining, renewing, or reading their messages.
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
    /// A renewal request is malformed, or the node cannot ask for a renewal with what it has.
    #[error("invalid renewal request: {0}")]
    InvalidRenewal(String),
    /// The manager answered a renewal with a refusal.
    #[error("the manager refused the renewal: {0}")]
    RenewalRefused(String),
    /// The manager answered a renewal with something that is not a usable certificate.
    #[error("invalid renewal response: {0}")]
    BadRenewal(String),
    /// The request could not be carried (connect, stream, timeout).
    #[error("request to the manager failed: {0}")]
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
        validate_csr_size(&self.csr_der).map_err(JoinError::InvalidRequest)
    }
}

/// Checks that a certificate signing request is non-empty and at most [`MAX_CSR_LEN`] bytes.
fn validate_csr_size(csr_der: &[u8]) -> Result<(), String> {
    if csr_der.is_empty() {
        return Err("the certificate signing request is empty".to_string());
    }
    if csr_der.len() > MAX_CSR_LEN {
        return Err(format!(
            "the certificate signing request is {} bytes, the limit is {MAX_CSR_LEN}",
            csr_der.len()
        ));
    }
    Ok(())
}

/// What a member sends to a manager, over its authenticated connection, to renew its
/// certificate. There is no node id or role to ask for: the manager takes both from the
/// certificate the caller connected with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenewRequest {
    /// A PKCS#10 certificate signing request (DER) for the node's new key.
    pub csr_der: Vec<u8>,
}

impl fmt::Debug for RenewRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RenewRequest")
            .field("csr_der", &format_args!("<{} bytes>", self.csr_der.len()))
            .finish()
    }
}

impl RenewRequest {
    /// Checks the CSR: non-empty, at most [`MAX_CSR_LEN`] bytes.
    pub fn validate(&self) -> Result<(), JoinError> {
        validate_csr_size(&self.csr_der).map_err(JoinError::InvalidRenewal)
    }
}

/// A request to the cluster PKI, as it travels on the wire. The tag tells a join from a
/// renewal, so both share a manager's request channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PkiRequest {
    /// A node without a certificate joins with a token.
    Join(JoinRequest),
    /// A member renews its certificate.
    Renew(RenewRequest),
}

impl PkiRequest {
    /// Encodes the request (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("encoding into a Vec cannot fail")
    }

    /// Decodes and validates a request: at most [`MAX_REQUEST_LEN`] bytes, no trailing bytes,
    /// a known tag and valid fields ([`JoinRequest::validate`], [`RenewRequest::validate`]).
    /// The error is the problem alone; the receiver knows which kind of request it expected
    /// and words the refusal accordingly.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let req: PkiRequest = decode_bounded(bytes, MAX_REQUEST_LEN)?;
        req.validate().map_err(request_problem)?;
        Ok(req)
    }

    /// Checks the fields of the request inside.
    pub fn validate(&self) -> Result<(), JoinError> {
        match self {
            PkiRequest::Join(req) => req.validate(),
            PkiRequest::Renew(req) => req.validate(),
        }
    }

    /// The certificate signing request carried, whichever the kind.
    pub fn csr_der(&self) -> &[u8] {
        match self {
            PkiRequest::Join(req) => &req.csr_der,
            PkiRequest::Renew(req) => &req.csr_der,
        }
    }
}

/// The problem named by a request error, without the "invalid ... request" prefix.
fn request_problem(error: JoinError) -> String {
    match error {
        JoinError::InvalidRequest(problem) | JoinError::InvalidRenewal(problem) => problem,
        other => other.to_string(),
    }
}

/// What a manager answers to a join or a renewal request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    /// The join or renewal is accepted.
    Ok {
        /// The id assigned to the new node (for a renewal: the caller's id).
        node_id: NodeId,
        /// The role of the token that matched (for a renewal: the caller's role), written in
        /// the certificate.
        role: Role,
        /// The node's new certificate (DER).
        cert_der: Vec<u8>,
        /// The cluster CA certificate (DER).
        ca_der: Vec<u8>,
    },
    /// The join or renewal is refused.
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

/// Counters of the join and renewal requests a manager handled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Joins accepted (a certificate was issued to a new node).
    pub accepted: u64,
    /// Renewals accepted (a certificate was issued to a member).
    pub renewed: u64,
    /// Requests that did not decode or had an invalid field.
    pub malformed: u64,
    /// Joins whose secret matched no current token.
    pub invalid_token: u64,
    /// Joins whose wanted role is not the role of their token.
    pub wrong_role: u64,
    /// Requests the caller may not make: a renewal without a certificate, a join with one, a
    /// renewal with a certificate of another cluster or CA, an expired one, or a denied node's.
    pub unauthorized: u64,
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

/// A member whose certificate the authority renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Renewed {
    /// The member's id (that of the certificate it connected with).
    pub node_id: NodeId,
    /// The member's role (that of the certificate it connected with).
    pub role: Role,
    /// The new certificate, for the member's new key.
    pub cert: NodeCertificate,
}

/// The result of handling one request.
#[derive(Clone, Debug)]
pub struct JoinOutcome {
    /// The encoded [`JoinResponse`] to send back.
    pub response: Vec<u8>,
    /// The node that joined, when a join was accepted.
    pub joined: Option<Joined>,
    /// The member whose certificate was renewed, when a renewal was accepted.
    pub renewed: Option<Renewed>,
}

/// A manager's side of the join and renewal protocols: the cluster CA, the current join tokens
/// and the denied nodes.
#[derive(Debug)]
pub struct JoinAuthority {
    /// The cluster CA that signs the certificates.
    pub ca: ClusterCa,
    /// The current join tokens; rotating one invalidates future joins with it only.
    pub tokens: JoinTokens,
    /// Validity of the certificates issued (joins and renewals).
    pub validity: Duration,
    /// Nodes removed from the cluster: their renewals are refused. Share it with the
    /// transport's denylist (see [`JoinAuthority::with_denylist`]).
    pub denylist: Denylist,
    stats: JoinStats,
}

enum Refusal {
    Malformed(String),
    InvalidToken,
    WrongRole(String),
    Unauthorized(String),
    IssueFailed(String),
}

enum Granted {
    Joined(Joined),
    Renewed(Renewed),
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
            denylist: Denylist::new(),
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
            denylist: Denylist::new(),
            stats: JoinStats::default(),
        }
    }

    /// Uses `denylist` (typically a clone of the transport's) to refuse renewals of removed
    /// nodes.
    pub fn with_denylist(mut self, denylist: Denylist) -> Self {
        self.denylist = denylist;
        self
    }

    /// What was handled so far.
    pub fn stats(&self) -> JoinStats {
        self.stats
    }

    /// Handles one encoded [`PkiRequest`] from a caller without a certificate (it may only
    /// join) and returns the encoded [`JoinResponse`]. `new_node_id` is called only for an
    /// authorised join, to assign the new node's id.
    pub fn handle(
        &mut self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> Vec<u8> {
        self.handle_request(req_bytes, now, new_node_id).response
    }

    /// Like [`JoinAuthority::handle`], also telling which node joined (to record it in the
    /// cluster state). The request is decoded with a size bound and its fields checked, then
    /// the secret is compared (in constant time); only a matching secret gets its CSR parsed
    /// and signed, so a wrong one costs no signature.
    pub fn handle_request(
        &mut self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> JoinOutcome {
        let decision = self.decide_join(req_bytes, now, new_node_id);
        self.conclude(decision.map(Granted::Joined))
    }

    /// Handles one encoded [`PkiRequest`] from a member authenticated by `from`, the
    /// certificate it connected with (it may only renew), and returns the encoded
    /// [`JoinResponse`]. The new certificate has the node id and role of `from`.
    pub fn handle_renewal(
        &mut self,
        from: &NodeCertificate,
        req_bytes: &[u8],
        now: SystemTime,
    ) -> Vec<u8> {
        self.handle_renewal_request(from, req_bytes, now).response
    }

    /// Like [`JoinAuthority::handle_renewal`], also telling whose certificate was renewed.
    pub fn handle_renewal_request(
        &mut self,
        from: &NodeCertificate,
        req_bytes: &[u8],
        now: SystemTime,
    ) -> JoinOutcome {
        let decision = self.decide_renewal(from, req_bytes, now, from.role);
        self.conclude(decision.map(Granted::Renewed))
    }

    /// Like [`JoinAuthority::handle_renewal_request`], issuing the new certificate with `role`
    /// instead of the caller's current one. The caller (a manager) decides the role from the
    /// cluster state: a promoted node gets a manager certificate once it is a manager, a demoted
    /// one a worker certificate. The node id still comes from the caller's certificate.
    pub fn handle_renewal_as(
        &mut self,
        from: &NodeCertificate,
        req_bytes: &[u8],
        now: SystemTime,
        role: Role,
    ) -> JoinOutcome {
        let decision = self.decide_renewal(from, req_bytes, now, role);
        self.conclude(decision.map(Granted::Renewed))
    }

    /// Handles a request from the transport's request channel: a caller without a certificate
    /// (`from == None`) may only join, a member only renew. Returns the encoded response.
    pub fn handle_any(
        &mut self,
        from: Option<&NodeCertificate>,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> Vec<u8> {
        self.handle_any_request(from, req_bytes, now, new_node_id)
            .response
    }

    /// Like [`JoinAuthority::handle_any`], also telling who joined or renewed.
    pub fn handle_any_request(
        &mut self,
        from: Option<&NodeCertificate>,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> JoinOutcome {
        match from {
            None => self.handle_request(req_bytes, now, new_node_id),
            Some(cert) => self.handle_renewal_request(cert, req_bytes, now),
        }
    }

    /// Counts and logs a decision and encodes the response.
    fn conclude(&mut self, decision: Result<Granted, Refusal>) -> JoinOutcome {
        let ca_der = self.ca.cert_der().to_vec();
        match decision {
            Ok(Granted::Joined(joined)) => {
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
                    ca_der,
                }
                .encode();
                JoinOutcome {
                    response,
                    joined: Some(joined),
                    renewed: None,
                }
            }
            Ok(Granted::Renewed(renewed)) => {
                self.stats.renewed += 1;
                tracing::info!(
                    node = %pki::node_hex(renewed.node_id),
                    role = %renewed.role,
                    "certificate renewed"
                );
                let response = JoinResponse::Ok {
                    node_id: renewed.node_id,
                    role: renewed.role,
                    cert_der: renewed.cert.der.clone(),
                    ca_der,
                }
                .encode();
                JoinOutcome {
                    response,
                    joined: None,
                    renewed: Some(renewed),
                }
            }
            Err(refusal) => {
                let (counter, reason) = match refusal {
                    Refusal::Malformed(r) => (&mut self.stats.malformed, r),
                    Refusal::InvalidToken => {
                        (&mut self.stats.invalid_token, INVALID_TOKEN.to_string())
                    }
                    Refusal::WrongRole(r) => (&mut self.stats.wrong_role, r),
                    Refusal::Unauthorized(r) => (&mut self.stats.unauthorized, r),
                    Refusal::IssueFailed(r) => (&mut self.stats.issue_failed, r),
                };
                *counter += 1;
                tracing::debug!(%reason, "PKI request refused");
                JoinOutcome {
                    response: JoinResponse::refused(reason).encode(),
                    joined: None,
                    renewed: None,
                }
            }
        }
    }

    fn decide_join(
        &self,
        req_bytes: &[u8],
        now: SystemTime,
        new_node_id: impl FnOnce() -> NodeId,
    ) -> Result<Joined, Refusal> {
        let req = match decode_bounded(req_bytes, MAX_REQUEST_LEN) {
            Ok(PkiRequest::Join(req)) => req,
            Ok(PkiRequest::Renew(_)) => {
                return Err(Refusal::Unauthorized(
                    "a renewal must be sent over a connection authenticated by the node's \
                     current certificate; a node without a certificate may only join"
                        .to_string(),
                ))
            }
            Err(problem) => {
                return Err(Refusal::Malformed(
                    JoinError::InvalidRequest(problem).to_string(),
                ))
            }
        };
        req.validate()
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
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

    fn decide_renewal(
        &self,
        from: &NodeCertificate,
        req_bytes: &[u8],
        now: SystemTime,
        role: Role,
    ) -> Result<Renewed, Refusal> {
        // Who asks comes first: nothing a refused caller sends is looked at.
        self.check_renewer(from, now)
            .map_err(Refusal::Unauthorized)?;
        let req = match decode_bounded(req_bytes, MAX_REQUEST_LEN) {
            Ok(PkiRequest::Renew(req)) => req,
            Ok(PkiRequest::Join(_)) => {
                return Err(Refusal::Unauthorized(format!(
                    "node {} is already a member: it may renew its certificate, not join again",
                    pki::node_hex(from.node_id)
                )))
            }
            Err(problem) => {
                return Err(Refusal::Malformed(
                    JoinError::InvalidRenewal(problem).to_string(),
                ))
            }
        };
        req.validate()
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        // The id comes from the caller's certificate and the role from the authority's caller,
        // never from the request.
        let cert = self
            .ca
            .issue(&req.csr_der, from.node_id, role, self.validity, now)
            .map_err(|e| Refusal::IssueFailed(e.to_string()))?;
        Ok(Renewed {
            node_id: from.node_id,
            role,
            cert,
        })
    }

    /// Whether the holder of `from` may renew it at `now`. The transport already checked the
    /// certificate during the handshake; this checks again, at the time of the request, so
    /// that a certificate handed over by other means, or a node denied since it connected,
    /// gets no new certificate.
    fn check_renewer(&self, from: &NodeCertificate, now: SystemTime) -> Result<(), String> {
        let node = pki::node_hex(from.node_id);
        let ours = self.ca.cluster_id();
        if from.cluster_id != ours {
            return Err(format!(
                "cannot renew the certificate of node {node}: {}",
                PkiError::WrongCluster {
                    expected: ours,
                    found: from.cluster_id,
                }
            ));
        }
        verify_issued_by(&from.der, self.ca.cert_der())
            .map_err(|e| format!("cannot renew the certificate of node {node}: {e}"))?;
        if self.denylist.is_denied(from.node_id) {
            return Err(PkiError::Denied(from.node_id).to_string());
        }
        if let Ok(ago) = now.duration_since(from.not_after) {
            if !ago.is_zero() {
                return Err(format!(
                    "the certificate of node {node} expired {} s ago; an expired certificate \
                     cannot be renewed, the node must join again",
                    ago.as_secs()
                ));
            }
        }
        if let Ok(ahead) = from.not_before.duration_since(now) {
            if !ahead.is_zero() {
                return Err(format!(
                    "the certificate of node {node} is not valid yet (it starts in {} s)",
                    ahead.as_secs()
                ));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Node side: join
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
    join_through(endpoint, manager, token, hostname, want, timeout)
        .await
        .map(|j| (j.identity, j.ca_der))
}

/// What [`join_through`] returns.
#[derive(Debug)]
pub struct JoinedCluster {
    /// This node's new identity.
    pub identity: NodeIdentity,
    /// The cluster CA certificate (DER).
    pub ca_der: Vec<u8>,
    /// The id of the manager that admitted this node (from the certificate it presented).
    pub manager_id: NodeId,
}

/// Like [`join`], also telling which manager admitted this node, so that the new member can
/// reach it over the authenticated transport right away.
pub async fn join_through(
    endpoint: &quinn::Endpoint,
    manager: SocketAddr,
    token: &JoinToken,
    hostname: &str,
    want: Role,
    timeout: Duration,
) -> Result<JoinedCluster, JoinError> {
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
    let (bytes, server) = Transport::request_once_from(
        endpoint,
        client_config,
        manager,
        pki::JOIN_SERVER_NAME,
        &PkiRequest::Join(request).encode(),
        timeout,
    )
    .await
    .map_err(|e| classify_transport_error(e, manager))?;
    let manager_id = server
        .map(|c| c.node_id)
        .ok_or_else(|| JoinError::BadResponse("the manager presented no certificate".into()))?;

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
    Ok(JoinedCluster {
        identity,
        ca_der,
        manager_id,
    })
}

// ---------------------------------------------------------------------------------------------
// Node side: renewal
// ---------------------------------------------------------------------------------------------

/// Renews this node's certificate through the manager `manager` (a node id the transport has
/// an address for): generates a new key, sends a certificate signing request for it over the
/// transport's authenticated connection, and returns the new identity. `current` is the
/// identity the transport was started with, `ca_der` the cluster CA certificate.
///
/// The response is checked: the CA certificate must be `ca_der`, the new certificate must be
/// signed by it, name the node id, role and cluster of `current`, certify the new key and not
/// be expired. The transport keeps presenting `current` until the caller rebuilds it from the
/// new identity (see [`net::quic_configs`]).
pub async fn renew(
    transport: &Transport,
    manager: NodeId,
    current: &NodeIdentity,
    ca_der: &[u8],
) -> Result<NodeIdentity, JoinError> {
    renew_as(transport, manager, current, ca_der, current.cert.role).await
}

/// Like [`renew`], expecting the new certificate to have `role` (a node that was promoted or
/// demoted; the manager decides, from the cluster state, and this checks it decided `role`).
pub async fn renew_as(
    transport: &Transport,
    manager: NodeId,
    current: &NodeIdentity,
    ca_der: &[u8],
    role_wanted: Role,
) -> Result<NodeIdentity, JoinError> {
    let ours = &current.cert;
    let node = pki::node_hex(ours.node_id);
    if transport.local_id() != ours.node_id {
        return Err(JoinError::InvalidRenewal(format!(
            "the transport authenticates node {}, the identity to renew is node {node}",
            pki::node_hex(transport.local_id())
        )));
    }
    verify_issued_by(&ours.der, ca_der).map_err(JoinError::InvalidRenewal)?;
    if SystemTime::now() > ours.not_after {
        return Err(JoinError::InvalidRenewal(format!(
            "the certificate of node {node} has expired; an expired certificate cannot be \
             renewed, the node must join again"
        )));
    }

    let key = NodeKey::generate()?;
    let request = RenewRequest {
        csr_der: key.csr_der(ours.node_id)?,
    };
    request.validate()?;
    let bytes = transport
        .request(manager, &PkiRequest::Renew(request).encode())
        .await?;

    let response = JoinResponse::decode(&bytes).map_err(|e| match e {
        JoinError::BadResponse(problem) => JoinError::BadRenewal(problem),
        other => other,
    })?;
    let (node_id, role, cert_der, sent_ca) = match response {
        JoinResponse::Ok {
            node_id,
            role,
            cert_der,
            ca_der,
        } => (node_id, role, cert_der, ca_der),
        JoinResponse::Err { reason } => return Err(JoinError::RenewalRefused(printable(&reason))),
    };
    if sent_ca != ca_der {
        return Err(JoinError::BadRenewal(
            "the CA certificate in the response is not the cluster's".to_string(),
        ));
    }
    let cert = NodeCertificate::parse(&cert_der)
        .map_err(|e| JoinError::BadRenewal(format!("the node certificate: {e}")))?;
    if cert.node_id != ours.node_id || node_id != ours.node_id {
        return Err(JoinError::BadRenewal(format!(
            "the certificate names node {} and the response node {}, this is node {node}",
            pki::node_hex(cert.node_id),
            pki::node_hex(node_id)
        )));
    }
    if cert.role != role_wanted || role != role_wanted {
        return Err(JoinError::BadRenewal(format!(
            "the certificate has role {} and the response {role}, node {node} asked for {role_wanted}",
            cert.role
        )));
    }
    if cert.cluster_id != ours.cluster_id {
        return Err(JoinError::BadRenewal(format!(
            "the certificate belongs to cluster {}, node {node} to cluster {}",
            cert.cluster_id, ours.cluster_id
        )));
    }
    verify_issued_by(&cert_der, ca_der).map_err(JoinError::BadRenewal)?;
    if SystemTime::now() > cert.not_after {
        return Err(JoinError::BadRenewal(
            "the new certificate has already expired".to_string(),
        ));
    }
    NodeIdentity::new(cert, key)
        .map_err(|e| JoinError::BadRenewal(format!("the certificate is not for our new key: {e}")))
}

/// When a node renews its certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPlan;

impl RenewalPlan {
    /// A renewal time drawn uniformly between 50% and 80% of the certificate's validity (see
    /// [`pki::renewal_window`]), so that nodes issued together do not all renew together.
    /// Draw it once per certificate and keep it; test it with [`renewal_due`].
    pub fn for_cert(cert: &NodeCertificate, rng: &mut impl Rng) -> SystemTime {
        pki::pick_renewal_time(cert.not_before, cert.not_after, rng)
    }
}

/// Whether `cert` should be renewed at `now`, `planned` being the time drawn for it by
/// [`RenewalPlan::for_cert`]. The planned time is held inside the certificate's renewal window,
/// so a plan made for another certificate (the one before) neither renews a fresh certificate
/// at once nor lets this one run past 80% of its validity. An expired certificate is due too
/// (although it can no longer be renewed: the node must join again).
pub fn renewal_due(cert: &NodeCertificate, now: SystemTime, planned: SystemTime) -> bool {
    let (start, end) = cert.renewal_window();
    // `max` then `min` rather than `clamp`, which would panic on an inverted window.
    let at = planned.max(start).min(end);
    now >= at
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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
    type Tamper = Box<dyn Fn(&PkiRequest, JoinResponse) -> Vec<u8> + Send>;

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

        fn tamper(&self, f: impl Fn(&PkiRequest, JoinResponse) -> Vec<u8> + Send + 'static) {
            *self.tamper.lock().unwrap() = Some(Box::new(f));
        }

        fn seen(&self) -> usize {
            self.requests_seen.load(Ordering::SeqCst)
        }
    }

    /// Answers join requests (from nodes without a certificate) and renewals (from members)
    /// with the authority; node ids are assigned from 100 up.
    async fn serve(
        mut requests: mpsc::Receiver<IncomingRequest>,
        authority: Arc<Mutex<JoinAuthority>>,
        seen: Arc<AtomicUsize>,
        tamper: Arc<Mutex<Option<Tamper>>>,
    ) {
        let mut next_id = 100;
        while let Some(req) = requests.recv().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let response = authority.lock().unwrap().handle_any(
                req.from.as_ref(),
                &req.body,
                SystemTime::now(),
                || {
                    next_id += 1;
                    next_id
                },
            );
            let response = match (&*tamper.lock().unwrap(), PkiRequest::decode(&req.body)) {
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

    /// The wire form of a join request.
    fn wire(req: JoinRequest) -> Vec<u8> {
        PkiRequest::Join(req).encode()
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
                        req.csr_der(),
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
            refusal(&authority.handle(&wire(request([9; 16], Role::Worker)), now, &mut id));
        assert_eq!(reason, INVALID_TOKEN);

        let mut bad = request(worker, Role::Worker);
        bad.hostname = "bad host".to_string();
        let reason = refusal(&authority.handle(&wire(bad), now, &mut id));
        assert!(reason.contains("the hostname contains ' '"), "{reason}");

        let mut bad = request(worker, Role::Worker);
        bad.csr_der = vec![0x30; MAX_CSR_LEN + 1];
        let reason = refusal(&authority.handle(&wire(bad), now, &mut id));
        assert!(reason.contains("limit is 4096"), "{reason}");

        let mut bad = request(worker, Role::Worker);
        bad.csr_der = vec![0x30, 0x03, 1, 2, 3];
        let reason = refusal(&authority.handle(&wire(bad), now, &mut id));
        assert!(
            reason.contains("invalid certificate signing request"),
            "{reason}"
        );

        let mut trailing = wire(request(worker, Role::Worker));
        trailing.push(0);
        let reason = refusal(&authority.handle(&trailing, now, &mut id));
        assert!(reason.contains("1 trailing bytes"), "{reason}");

        // Only the request with a bad CSR was authorised far enough to be given an id.
        assert_eq!(calls, 1);
        let outcome = authority.handle_request(&wire(request(worker, Role::Worker)), now, || 8);
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
                issue_failed: 1,
                ..JoinStats::default()
            }
        );
    }

    #[test]
    fn join_authority_wrong_secret_costs_no_csr_parsing_and_no_signature() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let mut authority = JoinAuthority::with_new_tokens(ca);
        let worker = authority.tokens.worker.secret;
        let mut wrong = worker;
        wrong[15] ^= 1;
        let now = SystemTime::now();
        let mut calls = 0;
        // A CSR that does not parse: with a wrong secret it is never looked at, so the
        // refusal is the token's, no id is assigned and nothing is signed.
        for secret in [wrong, [0; 16]] {
            let mut req = request(secret, Role::Worker);
            req.csr_der = vec![0x30, 0x03, 1, 2, 3];
            let outcome = authority.handle_request(&wire(req), now, || {
                calls += 1;
                7
            });
            assert_eq!(refusal(&outcome.response), INVALID_TOKEN);
            assert!(outcome.joined.is_none());
        }
        assert_eq!(calls, 0);
        assert_eq!(
            authority.stats(),
            JoinStats {
                invalid_token: 2,
                ..JoinStats::default()
            }
        );
        // The same CSR with the right secret is parsed, and refused for what it is.
        let mut req = request(worker, Role::Worker);
        req.csr_der = vec![0x30, 0x03, 1, 2, 3];
        let reason = refusal(&authority.handle(&wire(req), now, || 7));
        assert!(
            reason.contains("invalid certificate signing request"),
            "{reason}"
        );
        assert_eq!(authority.stats().issue_failed, 1);
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

    // --- renewal (the manager's decisions; the loopback tests are in tests/renewal.rs) -----

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn renewal(csr_der: Vec<u8>) -> Vec<u8> {
        PkiRequest::Renew(RenewRequest { csr_der }).encode()
    }

    fn fresh_csr() -> Vec<u8> {
        NodeKey::generate().unwrap().csr_der(0).unwrap()
    }

    fn granted(bytes: &[u8]) -> (NodeId, Role, NodeCertificate) {
        match JoinResponse::decode(bytes).unwrap() {
            JoinResponse::Ok {
                node_id,
                role,
                cert_der,
                ..
            } => (node_id, role, NodeCertificate::parse(&cert_der).unwrap()),
            JoinResponse::Err { reason } => panic!("expected a certificate, got {reason:?}"),
        }
    }

    #[test]
    fn renew_authority_keeps_the_callers_id_and_role() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let cluster_id = ca.cluster_id();
        let mut authority = JoinAuthority::with_new_tokens(ca);
        let now = SystemTime::now();
        for (id, role) in [(5, Role::Worker), (6, Role::Manager)] {
            let current = issue(&authority.ca, id, role).cert;
            // The request names the manager's id as its wish: it is ignored.
            let key = NodeKey::generate().unwrap();
            // At 49 days, inside the renewal window.
            let outcome = authority.handle_any_request(
                Some(&current),
                &renewal(key.csr_der(MANAGER_ID).unwrap()),
                now + 49 * DAY,
                || panic!("a renewal assigns no node id"),
            );
            assert!(outcome.joined.is_none());
            let renewed = outcome.renewed.unwrap();
            let (node_id, granted_role, cert) = granted(&outcome.response);
            assert_eq!((node_id, granted_role), (id, role));
            assert_eq!(
                (cert.node_id, cert.role, cert.cluster_id),
                (id, role, cluster_id)
            );
            assert_eq!(renewed.cert, cert);
            assert!(cert.not_after > current.not_after, "a fresh validity");
            NodeIdentity::new(cert, key).unwrap();
        }
        let stats = authority.stats();
        assert_eq!((stats.renewed, stats.accepted), (2, 0));
    }

    #[test]
    fn renew_authority_refusals_name_the_problem() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let mut authority = JoinAuthority::with_new_tokens(ca);
        let worker_secret = authority.tokens.worker.secret;
        let now = SystemTime::now();
        let member = issue(&authority.ca, 5, Role::Worker).cert;
        let refused = |authority: &mut JoinAuthority, from: &NodeCertificate, body: &[u8]| {
            refusal(&authority.handle_renewal(from, body, now))
        };

        // A certificate of another cluster.
        let other = ClusterCa::generate(ClusterId::random()).unwrap();
        let foreign = issue(&other, 5, Role::Worker).cert;
        let reason = refused(&mut authority, &foreign, &renewal(fresh_csr()));
        assert!(reason.contains("belongs to cluster"), "{reason}");
        assert!(
            reason.contains(&authority.ca.cluster_id().to_string()),
            "{reason}"
        );

        // Our cluster id, but another CA.
        let impostor = ClusterCa::generate(authority.ca.cluster_id()).unwrap();
        let forged = issue(&impostor, 5, Role::Manager).cert;
        let reason = refused(&mut authority, &forged, &renewal(fresh_csr()));
        assert!(reason.contains("not signed by the cluster CA"), "{reason}");

        // An expired certificate, and one not valid yet.
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der(5).unwrap();
        let expired = authority
            .ca
            .issue_with_validity(&csr, 5, Role::Worker, now - 3 * DAY, now - DAY)
            .unwrap();
        let reason = refused(&mut authority, &expired, &renewal(fresh_csr()));
        assert!(reason.contains("expired"), "{reason}");
        assert!(reason.contains("must join again"), "{reason}");
        let early = authority
            .ca
            .issue_with_validity(&csr, 5, Role::Worker, now + DAY, now + 3 * DAY)
            .unwrap();
        let reason = refused(&mut authority, &early, &renewal(fresh_csr()));
        assert!(reason.contains("not valid yet"), "{reason}");

        // A member asking to join, with a genuine worker secret.
        let join = wire(request(worker_secret, Role::Worker));
        let reason = refused(&mut authority, &member, &join);
        assert!(reason.contains("already a member"), "{reason}");

        // Garbage, an oversized and a smuggled field: malformed renewals.
        let reason = refused(&mut authority, &member, b"\xff\xff");
        assert!(reason.starts_with("invalid renewal request"), "{reason}");
        let mut smuggled = renewal(fresh_csr());
        smuggled.push(0); // as if a role followed
        let reason = refused(&mut authority, &member, &smuggled);
        assert!(reason.contains("1 trailing bytes"), "{reason}");
        let reason = refused(&mut authority, &member, &renewal(vec![]));
        assert!(reason.contains("request is empty"), "{reason}");
        let reason = refused(&mut authority, &member, &vec![0; MAX_REQUEST_LEN + 1]);
        assert!(reason.contains("the limit is 8192"), "{reason}");

        // A CSR whose signature does not verify.
        let reason = refused(&mut authority, &member, &renewal(vec![0x30, 0x03, 1, 2, 3]));
        assert!(
            reason.contains("invalid certificate signing request"),
            "{reason}"
        );

        // A denied node, even with an otherwise perfect request.
        authority.denylist.deny(5);
        let reason = refused(&mut authority, &member, &renewal(fresh_csr()));
        assert!(
            reason.contains("node 0000000000000005 is denied"),
            "{reason}"
        );

        // A caller without a certificate may not renew.
        let reason = refusal(
            &authority.handle(&renewal(fresh_csr()), now, || panic!("no id for a renewal")),
        );
        assert!(
            reason.contains("a node without a certificate may only join"),
            "{reason}"
        );

        assert_eq!(
            authority.stats(),
            JoinStats {
                malformed: 4,
                unauthorized: 7,
                issue_failed: 1,
                ..JoinStats::default()
            }
        );
    }

    #[test]
    fn renew_authority_shares_the_transports_denylist() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let denylist = Denylist::new();
        let mut authority = JoinAuthority::with_new_tokens(ca).with_denylist(denylist.clone());
        let member = issue(&authority.ca, 9, Role::Manager).cert;
        let now = SystemTime::now();
        granted(&authority.handle_renewal(&member, &renewal(fresh_csr()), now));
        denylist.deny(9);
        let reason = refusal(&authority.handle_renewal(&member, &renewal(fresh_csr()), now));
        assert!(reason.contains("is denied"), "{reason}");
    }

    #[test]
    fn renew_request_wire_form() {
        let join = PkiRequest::Join(request([3; 16], Role::Worker));
        let csr = fresh_csr();
        let renew = PkiRequest::Renew(RenewRequest {
            csr_der: csr.clone(),
        });
        for req in [&join, &renew] {
            assert_eq!(&PkiRequest::decode(&req.encode()).unwrap(), req);
        }
        // The first byte is the tag.
        assert_eq!(join.encode()[0], 0);
        assert_eq!(renew.encode()[0], 1);
        assert_eq!(renew.csr_der(), &csr[..]);
        let mut unknown = renew.encode();
        unknown[0] = 2;
        assert!(PkiRequest::decode(&unknown).is_err());
        // Validation applies inside the envelope.
        let empty = PkiRequest::Renew(RenewRequest { csr_der: vec![] }).encode();
        let e = PkiRequest::decode(&empty).unwrap_err();
        assert!(e.contains("request is empty"), "{e}");
        assert!(!e.contains("invalid"), "the caller words the prefix: {e}");
        let e = PkiRequest::decode(&vec![1; MAX_REQUEST_LEN + 1]).unwrap_err();
        assert!(e.contains("the limit is"), "{e}");
        for garbage in [&[][..], &[0xff; 7], b"SHOAL"] {
            assert!(PkiRequest::decode(garbage).is_err());
        }
        assert!(
            !format!("{join:?}").contains("3, 3"),
            "the secret is redacted"
        );
        assert!(format!("{renew:?}").contains("bytes>"));
    }
}
