//! The cluster PKI and join tokens.
//!
//! Every cluster owns a root CA (ECDSA P-256). Managers keep the CA key and issue node
//! certificates from certificate signing requests; a node's private key never leaves the node.
//! A node certificate names:
//!
//! * the node id (CN, 16 lowercase hex digits),
//! * the node's role (OU, `manager` or `worker`),
//! * the cluster id (O, 32 lowercase hex digits),
//! * the DNS name peers verify: `<nodeid>.<clusterid>.shoal` (see [`server_name`]).
//!
//! Join tokens (`SHOAL-1-<ca digest>-<secret>`) carry the SHA-256 of the CA certificate, so a
//! joiner can check that it talks to a manager of the right cluster before revealing its secret,
//! and a 16-byte secret that authorises the join and picks the role.
//!
//! The rustls configurations built here are TLS 1.3 only, use the `ring` provider, verify peers
//! against the cluster CA, refuse certificates of other clusters and of denied (removed) nodes,
//! and disable session resumption so that every connection re-checks the peer's certificate.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::OsRng;
use rand::{CryptoRng, Rng, RngCore};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::AttributeTypeAndValue;

mod operator;
pub use operator::*;

/// A node's identity in the cluster. Certificates show it as 16 lowercase hex digits.
pub type NodeId = u64;

/// Validity of a node certificate unless the caller asks otherwise: 90 days.
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// Validity of the cluster's root CA certificate: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// How far back `not_before` is set when issuing, to tolerate small clock differences.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);

/// The server name a joiner passes to the TLS layer. It is not checked: a joiner does not know
/// the manager's node id yet, so [`join_client_config`] verifies the manager by the CA digest of
/// the join token and by the name written in the manager's own certificate.
pub const JOIN_SERVER_NAME: &str = "join.shoal";

/// The version of the join token format this build reads and writes.
pub const TOKEN_VERSION: u32 = 1;

const TOKEN_PREFIX: &str = "SHOAL";
const CA_COMMON_NAME_PREFIX: &str = "shoal-ca ";
const PEM_CERTIFICATE: &str = "CERTIFICATE";
const PEM_PRIVATE_KEY: &str = "PRIVATE KEY";
/// Latest instant an X.509 time can express (9999-12-31T23:59:59Z), in Unix seconds.
const MAX_X509_UNIX_SECS: u64 = 253_402_300_799;

/// Everything that can go wrong in the PKI and with join tokens.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A join token does not follow `SHOAL-1-<64 hex digest>-<32 hex secret>`.
    #[error("malformed join token: {0}")]
    TokenFormat(String),
    /// The CA certificate presented by the server is not the one the join token names.
    #[error(
        "CA certificate digest mismatch: the join token expects {}, the server presented a CA with digest {}",
        hex(.expected),
        hex(.found)
    )]
    CaDigestMismatch {
        /// Digest taken from the join token.
        expected: [u8; 32],
        /// Digest of the CA certificate the server sent.
        found: [u8; 32],
    },
    /// A certificate is missing, malformed or lacks a field shoal needs.
    #[error("invalid certificate: {0}")]
    Certificate(String),
    /// A certificate signing request is malformed or its signature does not verify.
    #[error("invalid certificate signing request: {0}")]
    Csr(String),
    /// A private key is malformed or of the wrong kind.
    #[error("invalid key: {0}")]
    Key(String),
    /// PEM text could not be read.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// A node id is not 16 hex digits.
    #[error("invalid node id: {0}")]
    NodeId(String),
    /// A cluster id is not 32 hex digits.
    #[error("invalid cluster id: {0}")]
    ClusterId(String),
    /// A role is neither `manager` nor `worker`.
    #[error("invalid role {0:?}: expected \"manager\" or \"worker\"")]
    Role(String),
    /// A validity period is empty or outside what X.509 can express.
    #[error("invalid validity period: {0}")]
    Validity(String),
    /// The peer's node id is on the denylist (the node was removed from the cluster).
    #[error("node {} is denied: it was removed from the cluster", node_hex(*.0))]
    Denied(NodeId),
    /// The certificate belongs to another cluster.
    #[error("certificate belongs to cluster {found}, expected cluster {expected}")]
    WrongCluster {
        /// Our cluster.
        expected: ClusterId,
        /// The cluster named by the certificate.
        found: ClusterId,
    },
    /// The certificate does not carry the role this use requires.
    #[error("certificate of node {} has role {found}, expected {expected}", node_hex(*.node_id))]
    WrongRole {
        /// The node named by the certificate.
        node_id: NodeId,
        /// The role required.
        expected: Role,
        /// The role in the certificate.
        found: Role,
    },
    /// rcgen could not build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls (or quinn, wrapping a rustls configuration) refused a configuration.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// A rustls certificate verifier could not be built.
    #[error("TLS verifier could not be built: {0}")]
    Verifier(String),
}

impl From<rustls::Error> for PkiError {
    fn from(error: rustls::Error) -> Self {
        PkiError::Tls(error.to_string())
    }
}

/// Result type of this module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------------------------
// Hex, ids and roles
// ---------------------------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `N` bytes from `2 * N` hex digits; the error names `what` and the problem.
fn decode_hex<const N: usize>(text: &str, what: &str) -> std::result::Result<[u8; N], String> {
    let chars = text.chars().count();
    if chars != 2 * N {
        return Err(format!(
            "{what} must be {} hex characters, found {chars}",
            2 * N
        ));
    }
    if let Some(bad) = text.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("{what} contains the non-hex character {bad:?}"));
    }
    let mut out = [0u8; N];
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => *slot = (hi << 4) | lo,
            _ => return Err(format!("{what} contains a non-hex character")),
        }
    }
    Ok(out)
}

/// The display form of a node id in certificates: 16 lowercase hex digits.
pub fn node_hex(node_id: NodeId) -> String {
    format!("{node_id:016x}")
}

/// Parses the display form of a node id (exactly 16 hex digits).
pub fn parse_node_id(text: &str) -> Result<NodeId> {
    decode_hex::<8>(text, "node id")
        .map(u64::from_be_bytes)
        .map_err(PkiError::NodeId)
}

/// The DNS name a node's certificate is issued for and that peers verify:
/// `<nodeid>.<clusterid>.shoal`. The cluster id may be passed by value or by reference.
pub fn server_name(node_id: NodeId, cluster_id: impl Borrow<ClusterId>) -> String {
    format!("{}.{}.shoal", node_hex(node_id), cluster_id.borrow())
}

/// A cluster's identity: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId([u8; 16]);

impl ClusterId {
    /// A fresh cluster id from the operating system's random source.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        ClusterId(bytes)
    }

    /// A cluster id from its bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        ClusterId(bytes)
    }

    /// The id's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

impl FromStr for ClusterId {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self> {
        decode_hex::<16>(text, "cluster id")
            .map(ClusterId)
            .map_err(PkiError::ClusterId)
    }
}

/// The role a node has in the cluster, as written in its certificate (OU).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    /// Runs a Raft replica and may issue certificates.
    Manager,
    /// Runs tasks only.
    Worker,
}

impl Role {
    /// The lowercase name used in certificates and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(PkiError::Role(other.to_string())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Time helpers
// ---------------------------------------------------------------------------------------------

/// Converts to whole Unix seconds inside the range X.509 can express.
fn to_x509_time(t: SystemTime, what: &str) -> Result<OffsetDateTime> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| PkiError::Validity(format!("{what} is before 1970-01-01")))?;
    let secs = secs.as_secs();
    if secs > MAX_X509_UNIX_SECS {
        return Err(PkiError::Validity(format!("{what} is after 9999-12-31")));
    }
    let secs =
        i64::try_from(secs).map_err(|_| PkiError::Validity(format!("{what} is out of range")))?;
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|e| PkiError::Validity(format!("{what} is out of range: {e}")))
}

fn from_unix_secs(secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(secs.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    // Keep the serial positive and of fixed length.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// A certificate (DER) as PEM text, e.g. the cluster CA certificate that a node keeps.
pub fn certificate_pem(der: &[u8]) -> String {
    pem_encode(PEM_CERTIFICATE, der)
}

/// The DER of the only `CERTIFICATE` block of PEM text.
pub fn certificate_der_from_pem(text: &str) -> Result<Vec<u8>> {
    pem_single(text, PEM_CERTIFICATE)
}

fn pem_encode(tag: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(tag, der.to_vec()), config)
}

/// Returns the contents of the only PEM block with `tag`; other tags are ignored.
fn pem_single(text: &str, tag: &str) -> Result<Vec<u8>> {
    let blocks = pem::parse_many(text).map_err(|e| PkiError::Pem(e.to_string()))?;
    let mut found = blocks.into_iter().filter(|b| b.tag() == tag);
    let first = found
        .next()
        .ok_or_else(|| PkiError::Pem(format!("no \"{tag}\" block")))?;
    if found.next().is_some() {
        return Err(PkiError::Pem(format!("more than one \"{tag}\" block")));
    }
    Ok(first.into_contents())
}

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Certificate(format!("not a DER X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Certificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    Ok(cert)
}

/// The value of the single attribute an iterator yields; `what` names it in errors.
fn single_attribute<'a, 'b>(
    mut values: impl Iterator<Item = &'b AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<&'a str>
where
    'a: 'b,
{
    let first = values
        .next()
        .ok_or_else(|| PkiError::Certificate(format!("subject has no {what}")))?;
    if values.next().is_some() {
        return Err(PkiError::Certificate(format!(
            "subject has more than one {what}"
        )));
    }
    first
        .as_str()
        .map_err(|e| PkiError::Certificate(format!("subject {what} is not a string: {e}")))
}

/// The cluster id named by a shoal CA certificate (CN `shoal-ca <cluster id>`).
fn ca_cluster_id(cert: &X509Certificate<'_>) -> Result<ClusterId> {
    let cn = single_attribute(cert.subject().iter_common_name(), "common name")?;
    let id = cn.strip_prefix(CA_COMMON_NAME_PREFIX).ok_or_else(|| {
        PkiError::Certificate(format!(
            "CA common name {cn:?} does not start with {CA_COMMON_NAME_PREFIX:?}"
        ))
    })?;
    id.parse()
        .map_err(|e| PkiError::Certificate(format!("CA common name: {e}")))
}

/// The subject key identifier of a certificate, if it has one.
fn subject_key_identifier(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
}

/// A node certificate, with the fields shoal reads from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeCertificate {
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
    /// The node id (CN).
    pub node_id: NodeId,
    /// The cluster the certificate belongs to (O).
    pub cluster_id: ClusterId,
    /// The node's role (OU).
    pub role: Role,
    /// Start of validity (whole seconds).
    pub not_before: SystemTime,
    /// End of validity (whole seconds).
    pub not_after: SystemTime,
}

impl NodeCertificate {
    /// Parses a DER node certificate and extracts its fields. Fails when the input is not a
    /// single well-formed certificate, when it is a CA certificate, when the node id, role or
    /// cluster id is missing, repeated or malformed, or when its subject alternative names do
    /// not contain [`server_name`] for its node and cluster. The signature is not checked here:
    /// that is the TLS verifiers' job.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let cert = parse_x509(der)?;
        if cert.is_ca() {
            return Err(PkiError::Certificate(
                "this is a CA certificate, not a node certificate".to_string(),
            ));
        }
        let subject = cert.subject();
        let node_id = parse_node_id(single_attribute(
            subject.iter_common_name(),
            "common name (node id)",
        )?)
        .map_err(|e| PkiError::Certificate(e.to_string()))?;
        let role: Role = single_attribute(
            subject.iter_organizational_unit(),
            "organizational unit (role)",
        )?
        .parse()
        .map_err(|e: PkiError| PkiError::Certificate(e.to_string()))?;
        let cluster_id: ClusterId =
            single_attribute(subject.iter_organization(), "organization (cluster id)")?
                .parse()
                .map_err(|e: PkiError| PkiError::Certificate(e.to_string()))?;

        let expected_name = server_name(node_id, cluster_id);
        let san = cert
            .subject_alternative_name()
            .map_err(|e| {
                PkiError::Certificate(format!("malformed subject alternative names: {e}"))
            })?
            .ok_or_else(|| {
                PkiError::Certificate("no subject alternative name extension".to_string())
            })?;
        let names_node = san
            .value
            .general_names
            .iter()
            .any(|name| matches!(name, GeneralName::DNSName(dns) if *dns == expected_name));
        if !names_node {
            return Err(PkiError::Certificate(format!(
                "subject alternative names do not include {expected_name}"
            )));
        }

        let validity = cert.validity();
        let not_before = from_unix_secs(validity.not_before.timestamp())
            .ok_or_else(|| PkiError::Certificate("not_before is out of range".to_string()))?;
        let not_after = from_unix_secs(validity.not_after.timestamp())
            .ok_or_else(|| PkiError::Certificate("not_after is out of range".to_string()))?;

        Ok(NodeCertificate {
            der: der.to_vec(),
            node_id,
            cluster_id,
            role,
            not_before,
            not_after,
        })
    }

    /// The certificate as PEM text (to persist next to the node key).
    pub fn to_pem(&self) -> String {
        pem_encode(PEM_CERTIFICATE, &self.der)
    }

    /// Reads the only `CERTIFICATE` block of PEM text and parses it.
    pub fn from_pem(text: &str) -> Result<Self> {
        Self::parse(&pem_single(text, PEM_CERTIFICATE)?)
    }

    /// The DNS name peers verify for this node.
    pub fn server_name(&self) -> String {
        server_name(self.node_id, self.cluster_id)
    }

    /// Whether `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }

    /// The interval in which this certificate should be renewed (see [`renewal_window`]).
    pub fn renewal_window(&self) -> (SystemTime, SystemTime) {
        renewal_window(self.not_before, self.not_after)
    }
}

/// Finds the peer's node certificate among the certificates it presented during the handshake
/// (the end-entity certificate comes first).
pub fn peer_node(conn_certs: &[CertificateDer<'_>]) -> Result<NodeCertificate> {
    let end_entity = conn_certs
        .first()
        .ok_or_else(|| PkiError::Certificate("the peer presented no certificate".to_string()))?;
    NodeCertificate::parse(end_entity)
}

// ---------------------------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------------------------

/// A node's private key (ECDSA P-256). It is generated on the node and never sent anywhere;
/// the CA only ever sees certificate signing requests.
#[derive(Clone)]
pub struct NodeKey {
    pair: Arc<KeyPair>,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey").finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a fresh ECDSA P-256 key.
    pub fn generate() -> Result<Self> {
        Ok(NodeKey {
            pair: Arc::new(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?),
        })
    }

    /// Reads a PKCS#8 DER ECDSA P-256 private key.
    pub fn from_der(pkcs8: &[u8]) -> Result<Self> {
        let der = PrivatePkcs8KeyDer::from(pkcs8.to_vec());
        let pair = KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::Key(format!("not a PKCS#8 ECDSA P-256 key: {e}")))?;
        Ok(NodeKey {
            pair: Arc::new(pair),
        })
    }

    /// Reads the only `PRIVATE KEY` block of PEM text.
    pub fn from_pem(text: &str) -> Result<Self> {
        Self::from_der(&pem_single(text, PEM_PRIVATE_KEY)?)
    }

    /// The key as PKCS#8 PEM text (to persist on the node only).
    pub fn to_pem(&self) -> String {
        pem_encode(PEM_PRIVATE_KEY, self.key_der())
    }

    /// The key, PKCS#8 DER.
    pub fn key_der(&self) -> &[u8] {
        self.pair.serialized_der()
    }

    /// The public key as the raw curve point (what a certificate's public key bits hold).
    pub fn public_key_raw(&self) -> &[u8] {
        self.pair.public_key_raw()
    }

    /// A certificate signing request for this key, self-signed with it. `node_hint` is written
    /// as the requested CN; the CA ignores the requested subject and assigns the node id itself.
    pub fn csr_der(&self, node_hint: NodeId) -> Result<Vec<u8>> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_hex(node_hint));
        params.distinguished_name = dn;
        let csr = params.serialize_request(&self.pair)?;
        Ok(csr.der().to_vec())
    }

    fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der().to_vec()))
    }
}

/// A node's certificate together with its private key.
#[derive(Clone, Debug)]
pub struct NodeIdentity {
    /// The node certificate issued by the cluster CA.
    pub cert: NodeCertificate,
    /// The matching private key.
    pub key: NodeKey,
}

impl NodeIdentity {
    /// Pairs a certificate with its key, checking that the key is the one certified.
    pub fn new(cert: NodeCertificate, key: NodeKey) -> Result<Self> {
        let parsed = parse_x509(&cert.der)?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Key(format!(
                "the key does not match the certificate of node {}",
                node_hex(cert.node_id)
            )));
        }
        Ok(NodeIdentity { cert, key })
    }

    fn chain(&self, ca_der: &[u8]) -> Vec<CertificateDer<'static>> {
        vec![
            CertificateDer::from(self.cert.der.clone()),
            CertificateDer::from(ca_der.to_vec()),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster CA
// ---------------------------------------------------------------------------------------------

/// The cluster's root certificate authority. Only managers hold it.
pub struct ClusterCa {
    cluster_id: ClusterId,
    cert_der: Vec<u8>,
    key: KeyPair,
    /// A certificate with the CA's subject and key identifier, used only as the issuer when
    /// signing (rcgen takes the issuer's name and key id from it). Its own bytes are never
    /// published: `cert_der` is the CA certificate.
    issuer: rcgen::Certificate,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id)
            .field("digest", &hex(&self.digest()))
            .finish_non_exhaustive()
    }
}

fn ca_params(
    cluster_id: ClusterId,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    key_identifier: Option<Vec<u8>>,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("{CA_COMMON_NAME_PREFIX}{cluster_id}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    if let Some(id) = key_identifier {
        params.key_identifier_method = KeyIdMethod::PreSpecified(id);
    }
    params
}

impl ClusterCa {
    /// Creates the root CA of a new cluster: ECDSA P-256, CA:true (no intermediates below it),
    /// valid 10 years from now, subject CN `shoal-ca <cluster id>`.
    pub fn generate(cluster_id: ClusterId) -> Result<Self> {
        Self::generate_at(cluster_id, SystemTime::now())
    }

    /// Like [`ClusterCa::generate`], with the current time passed in.
    pub fn generate_at(cluster_id: ClusterId, now: SystemTime) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .ok_or_else(|| PkiError::Validity("now is out of range".to_string()))?;
        let not_after = now
            .checked_add(CA_VALIDITY)
            .ok_or_else(|| PkiError::Validity("now is out of range".to_string()))?;
        let params = ca_params(
            cluster_id,
            to_x509_time(not_before, "CA not_before")?,
            to_x509_time(not_after, "CA not_after")?,
            None,
        );
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().to_vec();
        Ok(ClusterCa {
            cluster_id,
            cert_der,
            key,
            issuer: cert,
        })
    }

    /// The cluster this CA serves.
    pub fn cluster_id(&self) -> ClusterId {
        self.cluster_id
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA certificate's DER: the digest join tokens carry.
    pub fn digest(&self) -> [u8; 32] {
        sha256(&self.cert_der)
    }

    /// The CA certificate and its private key as PEM text, to persist on managers.
    pub fn to_pem(&self) -> String {
        let mut text = pem_encode(PEM_CERTIFICATE, &self.cert_der);
        text.push_str(&pem_encode(PEM_PRIVATE_KEY, self.key.serialized_der()));
        text
    }

    /// Reads what [`ClusterCa::to_pem`] wrote: one `CERTIFICATE` and one `PRIVATE KEY` block.
    /// Checks that the certificate is a shoal CA certificate and that the key is its key.
    pub fn from_pem(text: &str) -> Result<Self> {
        let cert_der = pem_single(text, PEM_CERTIFICATE)?;
        let key_der = pem_single(text, PEM_PRIVATE_KEY)?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(
            &PrivatePkcs8KeyDer::from(key_der),
            &PKCS_ECDSA_P256_SHA256,
        )
        .map_err(|e| PkiError::Key(format!("CA key is not a PKCS#8 ECDSA P-256 key: {e}")))?;

        let cert = parse_x509(&cert_der)?;
        if !cert.is_ca() {
            return Err(PkiError::Certificate(
                "the certificate is not a CA certificate".to_string(),
            ));
        }
        let cluster_id = ca_cluster_id(&cert)?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Key(
                "the private key does not match the CA certificate".to_string(),
            ));
        }
        let not_before =
            OffsetDateTime::from_unix_timestamp(cert.validity().not_before.timestamp())
                .map_err(|e| PkiError::Certificate(format!("CA not_before: {e}")))?;
        let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
            .map_err(|e| PkiError::Certificate(format!("CA not_after: {e}")))?;
        let params = ca_params(
            cluster_id,
            not_before,
            not_after,
            subject_key_identifier(&cert),
        );
        let issuer = params.self_signed(&key)?;

        // Issued certificates name their issuer by these bytes; they must be the CA's subject.
        let rebuilt = parse_x509(issuer.der())?;
        if rebuilt.subject().as_raw() != cert.subject().as_raw() {
            return Err(PkiError::Certificate(
                "the CA subject is not one shoal writes".to_string(),
            ));
        }

        Ok(ClusterCa {
            cluster_id,
            cert_der,
            key,
            issuer,
        })
    }

    /// Issues a node certificate valid from one minute before `now` until `now + validity`.
    /// See [`ClusterCa::issue_with_validity`].
    pub fn issue(
        &self,
        csr_der: &[u8],
        node_id: NodeId,
        role: Role,
        validity: Duration,
        now: SystemTime,
    ) -> Result<NodeCertificate> {
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .ok_or_else(|| PkiError::Validity("now is out of range".to_string()))?;
        let not_after = now
            .checked_add(validity)
            .ok_or_else(|| PkiError::Validity("now + validity is out of range".to_string()))?;
        self.issue_with_validity(csr_der, node_id, role, not_before, not_after)
    }

    /// Issues a node certificate for the public key of a certificate signing request.
    ///
    /// The CSR's self-signature must verify (proof that the requester holds the key) and its
    /// key must be ECDSA P-256. Whatever subject or extensions the CSR asks for are ignored: the
    /// certificate gets CN = node id, OU = role, O = cluster id, the DNS name
    /// [`server_name`], key usage for TLS client and server authentication, and exactly the
    /// given validity period (times are truncated to whole seconds).
    pub fn issue_with_validity(
        &self,
        csr_der: &[u8],
        node_id: NodeId,
        role: Role,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<NodeCertificate> {
        let public_key = verified_csr_key(csr_der)?;
        let start = to_x509_time(not_before, "not_before")?;
        let end = to_x509_time(not_after, "not_after")?;
        if end <= start {
            return Err(PkiError::Validity(
                "not_after must be later than not_before".to_string(),
            ));
        }

        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_hex(node_id));
        dn.push(DnType::OrganizationalUnitName, role.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.to_string());
        params.distinguished_name = dn;
        let name = server_name(node_id, self.cluster_id);
        params.subject_alt_names = vec![SanType::DnsName(name.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = start;
        params.not_after = end;

        let cert = params.signed_by(&public_key, &self.issuer, &self.key)?;
        NodeCertificate::parse(cert.der())
    }
}

/// Parses a CSR, checks its self-signature and returns its (P-256) public key.
fn verified_csr_key(csr_der: &[u8]) -> Result<SubjectPublicKeyInfo> {
    let (rest, csr) = X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::Csr(format!("not a DER PKCS#10 request: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Csr(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    csr.verify_signature()
        .map_err(|e| PkiError::Csr(format!("the request's signature does not verify: {e}")))?;
    let spki_der = csr.certification_request_info.subject_pki.raw;
    let key = SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| PkiError::Csr(format!("unsupported public key: {e}")))?;
    if rcgen::PublicKeyData::algorithm(&key) != &PKCS_ECDSA_P256_SHA256 {
        return Err(PkiError::Csr(
            "the public key is not an ECDSA P-256 key".to_string(),
        ));
    }
    Ok(key)
}

// ---------------------------------------------------------------------------------------------
// Join tokens
// ---------------------------------------------------------------------------------------------

/// A join token: `SHOAL-1-<sha-256 of the CA certificate>-<secret>`.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate's DER.
    pub ca_digest: [u8; 32],
    /// The secret that authorises a join and picks the role.
    pub secret: [u8; 16],
}

impl JoinToken {
    /// A token with a fresh random secret.
    pub fn generate(ca_digest: [u8; 32]) -> Self {
        Self::generate_with(ca_digest, &mut OsRng)
    }

    /// A token with a secret drawn from `rng` (which must be cryptographically secure).
    pub fn generate_with(ca_digest: [u8; 32], rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut secret = [0u8; 16];
        rng.fill_bytes(&mut secret);
        JoinToken { ca_digest, secret }
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_digest", &hex(&self.ca_digest))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}-{TOKEN_VERSION}-{}-{}",
            hex(&self.ca_digest),
            hex(&self.secret)
        )
    }
}

impl FromStr for JoinToken {
    type Err = PkiError;

    /// Parses `SHOAL-1-<64 hex>-<32 hex>`; surrounding whitespace is ignored.
    fn from_str(text: &str) -> Result<Self> {
        let bad = |msg: String| PkiError::TokenFormat(msg);
        let text = text.trim();
        if text.is_empty() {
            return Err(bad("the token is empty".to_string()));
        }
        let parts: Vec<&str> = text.split('-').collect();
        if parts[0] != TOKEN_PREFIX {
            return Err(bad(format!(
                "a join token starts with \"{TOKEN_PREFIX}-\", this one starts with {:?}",
                parts[0].chars().take(16).collect::<String>()
            )));
        }
        let expected_parts = "expected 4 dash-separated parts: SHOAL-1-<CA digest>-<secret>";
        let Some(version) = parts.get(1) else {
            return Err(bad(format!("{expected_parts}, found 1")));
        };
        if *version != TOKEN_VERSION.to_string() {
            return Err(bad(format!(
                "unsupported token version {:?} (this build reads version {TOKEN_VERSION})",
                version.chars().take(16).collect::<String>()
            )));
        }
        if parts.len() != 4 {
            return Err(bad(format!("{expected_parts}, found {}", parts.len())));
        }
        let ca_digest = decode_hex::<32>(parts[2], "the CA digest").map_err(bad)?;
        let secret = decode_hex::<16>(parts[3], "the secret").map_err(bad)?;
        Ok(JoinToken { ca_digest, secret })
    }
}

/// Compares two secrets in time independent of where they differ.
fn secrets_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// The cluster's two join tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokens {
    /// Joins as a worker.
    pub worker: JoinToken,
    /// Joins as a manager.
    pub manager: JoinToken,
}

impl JoinTokens {
    /// Fresh worker and manager tokens for the CA with `ca_digest`.
    pub fn generate(ca_digest: [u8; 32]) -> Self {
        Self::generate_with(ca_digest, &mut OsRng)
    }

    /// Like [`JoinTokens::generate`], with secrets drawn from `rng` (which must be
    /// cryptographically secure).
    pub fn generate_with(ca_digest: [u8; 32], rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let worker = JoinToken::generate_with(ca_digest, rng);
        let mut manager = JoinToken::generate_with(ca_digest, rng);
        while secrets_equal(&manager.secret, &worker.secret) {
            manager = JoinToken::generate_with(ca_digest, rng);
        }
        JoinTokens { worker, manager }
    }

    /// The token of `role`.
    pub fn token(&self, role: Role) -> &JoinToken {
        match role {
            Role::Manager => &self.manager,
            Role::Worker => &self.worker,
        }
    }

    /// Gives `role` a new secret; the other role's token is unchanged. The old secret no
    /// longer authorises joins (nodes that already joined are unaffected).
    pub fn rotate(&mut self, role: Role) {
        self.rotate_with(role, &mut OsRng);
    }

    /// Like [`JoinTokens::rotate`], with the secret drawn from `rng` (which must be
    /// cryptographically secure).
    pub fn rotate_with(&mut self, role: Role, rng: &mut (impl RngCore + CryptoRng)) {
        let old = self.token(role).secret;
        let other = self.token(other_role(role)).secret;
        let ca_digest = self.token(role).ca_digest;
        let fresh = loop {
            let candidate = JoinToken::generate_with(ca_digest, rng);
            if !secrets_equal(&candidate.secret, &old) && !secrets_equal(&candidate.secret, &other)
            {
                break candidate;
            }
        };
        match role {
            Role::Manager => self.manager = fresh,
            Role::Worker => self.worker = fresh,
        }
    }

    /// The role a joiner presenting `secret` gets, if any. Both secrets are always compared,
    /// in constant time, so timing reveals neither secret.
    pub fn role_for_secret(&self, secret: &[u8; 16]) -> Option<Role> {
        let is_worker = secrets_equal(secret, &self.worker.secret);
        let is_manager = secrets_equal(secret, &self.manager.secret);
        match (is_worker, is_manager) {
            (true, _) => Some(Role::Worker),
            (false, true) => Some(Role::Manager),
            (false, false) => None,
        }
    }

    /// The role a whole token grants: its digest must be our CA's and its secret a current one.
    pub fn role_for_token(&self, token: &JoinToken) -> Option<Role> {
        let role = self.role_for_secret(&token.secret);
        if token.ca_digest == self.worker.ca_digest {
            role
        } else {
            None
        }
    }
}

fn other_role(role: Role) -> Role {
    match role {
        Role::Manager => Role::Worker,
        Role::Worker => Role::Manager,
    }
}

// ---------------------------------------------------------------------------------------------
// Denylist
// ---------------------------------------------------------------------------------------------

/// Node ids whose certificates are refused (nodes removed from the cluster). Cloning is cheap
/// and every clone sees the same set.
#[derive(Clone, Debug, Default)]
pub struct Denylist {
    ids: Arc<RwLock<BTreeSet<NodeId>>>,
}

impl Denylist {
    /// An empty denylist.
    pub fn new() -> Self {
        Self::default()
    }

    /// Denies `node_id` from now on. Returns whether it was not denied before.
    pub fn deny(&self, node_id: NodeId) -> bool {
        let mut ids = self
            .ids
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ids.insert(node_id)
    }

    /// Whether `node_id` is denied.
    pub fn is_denied(&self, node_id: NodeId) -> bool {
        let ids = self
            .ids
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ids.contains(&node_id)
    }

    /// The denied ids, in ascending order.
    pub fn ids(&self) -> Vec<NodeId> {
        let ids = self
            .ids
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        ids.iter().copied().collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Renewal
// ---------------------------------------------------------------------------------------------

/// `numerator / denominator` of a duration, exact to the nanosecond.
fn part_of(total: Duration, numerator: u128, denominator: u128) -> Duration {
    let nanos = total.as_nanos() * numerator / denominator;
    nanos_to_duration(nanos)
}

fn nanos_to_duration(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// When a certificate should be renewed: from 50% to 80% of its validity period. An empty or
/// inverted period gives `(not_before, not_before)`.
pub fn renewal_window(not_before: SystemTime, not_after: SystemTime) -> (SystemTime, SystemTime) {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let start = not_before
        .checked_add(part_of(total, 1, 2))
        .unwrap_or(not_before);
    let end = not_before
        .checked_add(part_of(total, 4, 5))
        .unwrap_or(not_before);
    (start, end)
}

/// A renewal time drawn uniformly from [`renewal_window`], so that nodes issued at the same
/// moment do not all renew at once.
pub fn pick_renewal_time(
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &mut impl Rng,
) -> SystemTime {
    let (start, end) = renewal_window(not_before, not_after);
    let width = end
        .duration_since(start)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let offset = rng.gen_range(0..=width);
    start
        .checked_add(nanos_to_duration(offset))
        .unwrap_or(start)
}

// ---------------------------------------------------------------------------------------------
// rustls configurations
// ---------------------------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca_der: &[u8]) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    store.add(CertificateDer::from(ca_der.to_vec()))?;
    Ok(Arc::new(store))
}

/// A verification failure carried inside a rustls error. rustls prints the inner error of
/// `CertificateError::Other` with `{:?}`, so this wrapper's `Debug` shows the readable message.
struct Refusal(PkiError);

impl fmt::Debug for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Refusal {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Wraps a verification failure so that rustls sends a certificate alert and the error
/// message names the problem.
fn rejected(error: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refusal(
        error,
    )))))
}

/// The shoal reason behind a handshake failure, when one of this module's verifiers refused the
/// peer (denied node, other cluster, CA digest mismatch...). `None` for other TLS errors.
pub fn refusal_reason(error: &rustls::Error) -> Option<&PkiError> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<Refusal>().map(|r| &r.0)
        }
        _ => None,
    }
}

/// The cluster a CA certificate serves; also checks that it is a CA certificate.
fn cluster_of_ca(ca_der: &[u8]) -> Result<ClusterId> {
    let cert = parse_x509(ca_der)?;
    if !cert.is_ca() {
        return Err(PkiError::Certificate(
            "the cluster CA certificate is not a CA certificate".to_string(),
        ));
    }
    ca_cluster_id(&cert)
}

/// Checks that `identity` belongs to the cluster of `ca_der` and returns that cluster.
fn identity_cluster(identity: &NodeIdentity, ca_der: &[u8]) -> Result<ClusterId> {
    let cluster_id = cluster_of_ca(ca_der)?;
    if identity.cert.cluster_id != cluster_id {
        return Err(PkiError::WrongCluster {
            expected: cluster_id,
            found: identity.cert.cluster_id,
        });
    }
    Ok(cluster_id)
}

/// Checks the fields of a peer certificate whose chain has already been verified.
fn check_peer(
    end_entity: &CertificateDer<'_>,
    cluster_id: ClusterId,
    denylist: &Denylist,
) -> Result<()> {
    let peer = NodeCertificate::parse(end_entity)?;
    if peer.cluster_id != cluster_id {
        return Err(PkiError::WrongCluster {
            expected: cluster_id,
            found: peer.cluster_id,
        });
    }
    if denylist.is_denied(peer.node_id) {
        return Err(PkiError::Denied(peer.node_id));
    }
    Ok(())
}

/// Which clients a server's verifier accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Clients {
    /// Members (node certificates, not denied); clients without a certificate finish the
    /// handshake too (joiners), and the application checks who may do what.
    Nodes,
    /// Operators of the control API on TCP: an operator certificate is required.
    Operators,
}

/// Server side: verifies client certificates (chain to the cluster CA, validity, cluster, and
/// what [`Clients`] says).
#[derive(Debug)]
struct ClusterClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    cluster_id: ClusterId,
    denylist: Denylist,
    clients: Clients,
}

impl ClusterClientVerifier {
    fn new(
        ca_der: &[u8],
        cluster_id: ClusterId,
        denylist: Denylist,
        clients: Clients,
    ) -> Result<Self> {
        let builder = WebPkiClientVerifier::builder_with_provider(roots(ca_der)?, provider());
        let builder = match clients {
            Clients::Nodes => builder.allow_unauthenticated(),
            Clients::Operators => builder,
        };
        let inner = builder
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
        Ok(ClusterClientVerifier {
            inner,
            cluster_id,
            denylist,
            clients,
        })
    }
}

impl ClientCertVerifier for ClusterClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.clients == Clients::Operators
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match self.clients {
            Clients::Nodes => check_peer(end_entity, self.cluster_id, &self.denylist),
            Clients::Operators => check_operator(end_entity, self.cluster_id),
        }
        .map_err(rejected)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Client side between members: verifies the server chain to the cluster CA and the server name
/// (via webpki), then the cluster and the denylist.
#[derive(Debug)]
struct ClusterServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    cluster_id: ClusterId,
    denylist: Denylist,
}

impl ClusterServerVerifier {
    fn new(ca_der: &[u8], cluster_id: ClusterId, denylist: Denylist) -> Result<Self> {
        let inner = WebPkiServerVerifier::builder_with_provider(roots(ca_der)?, provider())
            .build()
            .map_err(|e| PkiError::Verifier(e.to_string()))?;
        Ok(ClusterServerVerifier {
            inner,
            cluster_id,
            denylist,
        })
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        check_peer(end_entity, self.cluster_id, &self.denylist).map_err(rejected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The CA a client trusts for a node's server certificate.
#[derive(Debug)]
enum TrustedCa {
    /// The CA the server sends after its own certificate, if its SHA-256 is this (a joiner's
    /// token).
    Digest([u8; 32]),
    /// This CA certificate (DER), which the client holds (an operator).
    Der(Vec<u8>),
}

/// Client side for a joiner or an operator: the server must present a node certificate (a
/// manager's, if `role` says so) of the trusted CA's cluster, signed by it and valid now. The
/// name dialled is not checked: the node's own name, written in its certificate, is.
#[derive(Debug)]
struct NodeServerVerifier {
    ca: TrustedCa,
    role: Option<Role>,
    provider: Arc<CryptoProvider>,
}

impl NodeServerVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<()> {
        let (ca, below_ca): (&[u8], Vec<CertificateDer<'_>>) = match &self.ca {
            TrustedCa::Digest(expected) => {
                let (ca, below_ca) = intermediates.split_last().ok_or_else(|| {
                    PkiError::Certificate(
                        "the server sent no CA certificate after its own, so it cannot be checked against the join token"
                            .to_string(),
                    )
                })?;
                let found = sha256(ca);
                if found != *expected {
                    return Err(PkiError::CaDigestMismatch {
                        expected: *expected,
                        found,
                    });
                }
                (ca.as_ref(), below_ca.to_vec())
            }
            TrustedCa::Der(der) => (
                der.as_slice(),
                intermediates
                    .iter()
                    .filter(|c| c.as_ref() != der.as_slice())
                    .cloned()
                    .collect(),
            ),
        };
        let ca_cluster = cluster_of_ca(ca)?;
        let node = NodeCertificate::parse(end_entity)?;
        if node.cluster_id != ca_cluster {
            return Err(PkiError::WrongCluster {
                expected: ca_cluster,
                found: node.cluster_id,
            });
        }
        if let Some(role) = self.role.filter(|r| *r != node.role) {
            return Err(PkiError::WrongRole {
                node_id: node.node_id,
                expected: role,
                found: node.role,
            });
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots(ca)?, self.provider.clone())
                .build()
                .map_err(|e| PkiError::Verifier(e.to_string()))?;
        let name = ServerName::try_from(node.server_name())
            .map_err(|e| PkiError::Certificate(format!("invalid server name: {e}")))?;
        verifier
            .verify_server_cert(end_entity, &below_ca, &name, ocsp_response, now)
            .map_err(|e| {
                PkiError::Certificate(format!(
                    "the {} certificate does not verify against the {}: {e}",
                    if self.role == Some(Role::Manager) {
                        "manager"
                    } else {
                        "node"
                    },
                    match self.ca {
                        TrustedCa::Digest(_) => "token's CA",
                        TrustedCa::Der(_) => "cluster CA",
                    }
                ))
            })?;
        Ok(())
    }
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, ocsp_response, now)
            .map_err(rejected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn build_client_config(
    verifier: Arc<dyn ServerCertVerifier>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn;
    // Every connection re-verifies the peer (denylist, expiry): no session resumption.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// The TLS configuration of a node's endpoint for incoming connections.
///
/// It presents the node's certificate followed by the CA certificate (joiners check the CA
/// against their token's digest). Client certificates are verified when presented: chain to
/// `ca_der`, validity period, same cluster, not denied. Clients without a certificate complete
/// the handshake (they may only use the join protocol): the application must check the peer's
/// identity (`peer_identity()` / [`peer_node`]) before serving anything else.
pub fn server_config(
    identity: &NodeIdentity,
    ca_der: &[u8],
    denylist: Denylist,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ServerConfig> {
    let cluster_id = identity_cluster(identity, ca_der)?;
    let verifier = ClusterClientVerifier::new(ca_der, cluster_id, denylist, Clients::Nodes)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain(ca_der), identity.key.private_key_der())?;
    config.alpn_protocols = alpn;
    // No resumption: a resumed session would skip the denylist and expiry checks.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// The TLS configuration for connecting to another member (mutual TLS).
///
/// It presents the node's certificate and verifies the server's chain to `ca_der`, its validity,
/// its cluster, the denylist and the server name: connect with
/// [`server_name`]`(peer_id, cluster_id)` so that reaching another node than the one intended
/// fails.
pub fn client_config(
    identity: &NodeIdentity,
    ca_der: &[u8],
    denylist: Denylist,
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig> {
    let cluster_id = identity_cluster(identity, ca_der)?;
    let verifier = ClusterServerVerifier::new(ca_der, cluster_id, denylist)?;
    build_client_config(
        Arc::new(verifier),
        Some((identity.chain(ca_der), identity.key.private_key_der())),
        alpn,
    )
}

/// The TLS configuration of a node that has no certificate yet and joins with a token.
///
/// It presents no client certificate. The server must send its certificate followed by a CA
/// certificate whose SHA-256 is `expected_ca_digest`; its certificate must be a manager
/// certificate of that CA's cluster, valid now and signed by that CA. Anything else fails the
/// handshake, so the joiner never sends its secret to a manager of another cluster. The server
/// name passed when connecting is not checked (use [`JOIN_SERVER_NAME`]).
pub fn join_client_config(
    expected_ca_digest: [u8; 32],
    alpn: Vec<Vec<u8>>,
) -> Result<rustls::ClientConfig> {
    let verifier = NodeServerVerifier {
        ca: TrustedCa::Digest(expected_ca_digest),
        role: Some(Role::Manager),
        provider: provider(),
    };
    build_client_config(Arc::new(verifier), None, alpn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use rustls::{ClientConnection, ServerConnection};

    const ALPN: &[u8] = b"shoal/1";
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn alpn() -> Vec<Vec<u8>> {
        vec![ALPN.to_vec()]
    }

    fn new_ca() -> ClusterCa {
        ClusterCa::generate(ClusterId::random()).unwrap()
    }

    fn node(ca: &ClusterCa, node_id: NodeId, role: Role) -> NodeIdentity {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der(node_id).unwrap();
        let cert = ca
            .issue(&csr, node_id, role, DEFAULT_VALIDITY, SystemTime::now())
            .unwrap();
        NodeIdentity::new(cert, key).unwrap()
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Side {
        Client,
        Server,
    }

    fn pump<C, D>(from: &mut C) -> Vec<u8>
    where
        C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        buf
    }

    fn feed<C, D>(to: &mut C, mut bytes: &[u8])
    where
        C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
    {
        while !bytes.is_empty() {
            to.read_tls(&mut bytes).unwrap();
        }
    }

    /// Drives a TLS handshake in memory, returning the failing side and its error.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        name: &str,
    ) -> std::result::Result<(ClientConnection, ServerConnection), (Side, rustls::Error)> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
        let mut s = ServerConnection::new(Arc::new(server)).unwrap();
        for _ in 0..16 {
            let bytes = pump(&mut c);
            if !bytes.is_empty() {
                feed(&mut s, &bytes);
                s.process_new_packets().map_err(|e| (Side::Server, e))?;
            }
            let bytes = pump(&mut s);
            if !bytes.is_empty() {
                feed(&mut c, &bytes);
                c.process_new_packets().map_err(|e| (Side::Client, e))?;
            }
            if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
                return Ok((c, s));
            }
        }
        panic!("handshake did not finish");
    }

    fn token_error(text: &str) -> String {
        match text.parse::<JoinToken>() {
            Err(PkiError::TokenFormat(msg)) => msg,
            other => panic!("{text:?} parsed as {other:?}"),
        }
    }

    // --- tokens -------------------------------------------------------------------------------

    #[test]
    fn pki_token_round_trip() {
        let token = JoinToken {
            ca_digest: [0xab; 32],
            secret: [0x01; 16],
        };
        let text = token.to_string();
        assert_eq!(
            text,
            format!("SHOAL-1-{}-{}", "ab".repeat(32), "01".repeat(16))
        );
        assert_eq!(text.parse::<JoinToken>().unwrap(), token);
        assert_eq!(format!(" {text}\n").parse::<JoinToken>().unwrap(), token);
        let random = JoinToken::generate([7; 32]);
        assert_eq!(random.to_string().parse::<JoinToken>().unwrap(), random);
        assert!(!format!("{random:?}").contains(&hex(&random.secret)));
    }

    #[test]
    fn pki_malformed_tokens_say_what_is_wrong() {
        let digest = "ab".repeat(32);
        let secret = "01".repeat(16);
        assert!(token_error("").contains("empty"));
        assert!(
            token_error(&format!("SWMTKN-1-{digest}-{secret}")).contains("starts with \"SHOAL-\"")
        );
        assert!(token_error(&format!("shoal-1-{digest}-{secret}")).contains("starts with"));
        assert!(token_error(&format!("SHOAL-2-{digest}-{secret}"))
            .contains("unsupported token version \"2\""));
        assert!(token_error("SHOAL").contains("expected 4 dash-separated parts"));
        assert!(token_error(&format!("SHOAL-1-{digest}")).contains("found 3"));
        assert!(token_error(&format!("SHOAL-1-{digest}-{secret}-00")).contains("found 5"));
        assert!(
            token_error(&format!("SHOAL-1-{}-{secret}", "ab".repeat(31)))
                .contains("the CA digest must be 64 hex characters, found 62")
        );
        assert!(
            token_error(&format!("SHOAL-1-{digest}-{}", "01".repeat(15)))
                .contains("the secret must be 32 hex characters, found 30")
        );
        let bad_digest = format!("{}zz", "ab".repeat(31));
        assert!(token_error(&format!("SHOAL-1-{bad_digest}-{secret}"))
            .contains("the CA digest contains the non-hex character 'z'"));
        let bad_secret = format!("{}é", "0".repeat(31));
        assert!(token_error(&format!("SHOAL-1-{digest}-{bad_secret}"))
            .contains("the secret contains the non-hex character 'é'"));
        let err = format!("SHOAL-1-{digest}")
            .parse::<JoinToken>()
            .unwrap_err();
        assert!(err.to_string().starts_with("malformed join token: "));
    }

    #[test]
    fn pki_rotation_changes_one_role_only() {
        let mut tokens = JoinTokens::generate([3; 32]);
        assert_ne!(tokens.worker.secret, tokens.manager.secret);
        let old_worker = tokens.worker.clone();
        let old_manager = tokens.manager.clone();
        assert_eq!(
            tokens.role_for_secret(&old_worker.secret),
            Some(Role::Worker)
        );
        assert_eq!(
            tokens.role_for_secret(&old_manager.secret),
            Some(Role::Manager)
        );

        tokens.rotate(Role::Worker);
        assert_ne!(tokens.worker.secret, old_worker.secret);
        assert_eq!(tokens.worker.ca_digest, [3; 32]);
        assert_eq!(tokens.manager, old_manager);
        assert_eq!(tokens.role_for_secret(&old_worker.secret), None);
        assert_eq!(
            tokens.role_for_secret(&tokens.worker.secret),
            Some(Role::Worker)
        );
        assert_eq!(
            tokens.role_for_secret(&old_manager.secret),
            Some(Role::Manager)
        );

        let worker_before = tokens.worker.clone();
        tokens.rotate(Role::Manager);
        assert_eq!(tokens.worker, worker_before);
        assert_eq!(tokens.role_for_secret(&old_manager.secret), None);
        assert_eq!(
            tokens.role_for_secret(&tokens.manager.secret),
            Some(Role::Manager)
        );
        assert_eq!(tokens.token(Role::Manager), &tokens.manager);
    }

    #[test]
    fn pki_role_lookup_constant_time_compare() {
        assert!(secrets_equal(&[5; 16], &[5; 16]));
        let mut other = [5; 16];
        other[15] = 6;
        assert!(!secrets_equal(&[5; 16], &other));
        other = [5; 16];
        other[0] = 4;
        assert!(!secrets_equal(&[5; 16], &other));

        let mut rng = StdRng::seed_from_u64(9);
        let tokens = JoinTokens::generate_with([1; 32], &mut rng);
        assert_eq!(tokens.role_for_secret(&[0; 16]), None);
        assert_eq!(tokens.role_for_token(&tokens.manager), Some(Role::Manager));
        assert_eq!(tokens.role_for_token(&tokens.worker), Some(Role::Worker));
        let foreign = JoinToken {
            ca_digest: [2; 32],
            secret: tokens.worker.secret,
        };
        assert_eq!(tokens.role_for_token(&foreign), None);
    }

    // --- ids ----------------------------------------------------------------------------------

    #[test]
    fn pki_ids_and_roles_parse() {
        let id = ClusterId::from_bytes([0x1f; 16]);
        assert_eq!(id.to_string(), "1f".repeat(16));
        assert_eq!(id.to_string().parse::<ClusterId>().unwrap(), id);
        assert!(matches!(
            "xyz".parse::<ClusterId>(),
            Err(PkiError::ClusterId(_))
        ));
        assert_eq!(node_hex(0xab), "00000000000000ab");
        assert_eq!(parse_node_id("00000000000000ab").unwrap(), 0xab);
        assert!(parse_node_id("ab")
            .unwrap_err()
            .to_string()
            .contains("16 hex characters"));
        assert_eq!("worker".parse::<Role>().unwrap(), Role::Worker);
        assert!("admin".parse::<Role>().is_err());
        assert_eq!(
            server_name(1, id),
            format!("0000000000000001.{}.shoal", "1f".repeat(16))
        );
    }

    #[test]
    fn pki_denylist_is_shared_between_clones() {
        let list = Denylist::new();
        let clone = list.clone();
        assert!(!clone.is_denied(4));
        assert!(list.deny(4));
        assert!(!list.deny(4));
        assert!(clone.is_denied(4));
        assert_eq!(clone.ids(), vec![4]);
    }

    // --- CA and certificates ------------------------------------------------------------------

    #[test]
    fn pki_ca_generation_and_pem_round_trip() {
        let cluster_id = ClusterId::random();
        let ca = ClusterCa::generate(cluster_id).unwrap();
        assert_eq!(ca.cluster_id(), cluster_id);
        assert_eq!(ca.digest(), sha256(ca.cert_der()));
        assert_eq!(ca.digest(), ca.digest());

        let cert = parse_x509(ca.cert_der()).unwrap();
        assert!(cert.is_ca());
        assert_eq!(ca_cluster_id(&cert).unwrap(), cluster_id);
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, format!("shoal-ca {cluster_id}"));
        let years = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert!(years >= 10 * 365 * 24 * 3600);

        let text = ca.to_pem();
        assert!(text.contains("BEGIN CERTIFICATE") && text.contains("BEGIN PRIVATE KEY"));
        let reloaded = ClusterCa::from_pem(&text).unwrap();
        assert_eq!(reloaded.digest(), ca.digest());
        assert_eq!(reloaded.cert_der(), ca.cert_der());
        assert_eq!(reloaded.cluster_id(), cluster_id);
        assert_eq!(reloaded.to_pem(), text);

        // Certificates issued by the reloaded CA talk to those issued before the restart.
        let a = node(&ca, 1, Role::Manager);
        let b = node(&reloaded, 2, Role::Worker);
        let denylist = Denylist::new();
        let server = server_config(&a, ca.cert_der(), denylist.clone(), alpn()).unwrap();
        let client = client_config(&b, reloaded.cert_der(), denylist, alpn()).unwrap();
        handshake(client, server, &server_name(1, cluster_id)).unwrap();
    }

    #[test]
    fn pki_ca_from_pem_rejects_bad_input() {
        let ca = new_ca();
        let other = new_ca();
        let cert_only = pem_encode(PEM_CERTIFICATE, ca.cert_der());
        assert!(matches!(
            ClusterCa::from_pem(&cert_only),
            Err(PkiError::Pem(_))
        ));
        assert!(matches!(
            ClusterCa::from_pem("garbage"),
            Err(PkiError::Pem(_))
        ));
        let mismatched = format!(
            "{}{}",
            cert_only,
            pem_encode(PEM_PRIVATE_KEY, other.key.serialized_der())
        );
        let err = ClusterCa::from_pem(&mismatched).unwrap_err();
        assert!(err.to_string().contains("does not match"), "{err}");
        let node_cert = node(&ca, 1, Role::Worker);
        let not_ca = format!("{}{}", node_cert.cert.to_pem(), node_cert.key.to_pem());
        let err = ClusterCa::from_pem(&not_ca).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
    }

    #[test]
    fn pki_issue_and_parse_back() {
        let ca = new_ca();
        let key = NodeKey::generate().unwrap();
        // The CSR asks for another node id: the CA ignores it.
        let csr = key.csr_der(0xdead).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(250);
        let cert = ca
            .issue(
                &csr,
                0x0123_4567_89ab_cdef,
                Role::Manager,
                DEFAULT_VALIDITY,
                now,
            )
            .unwrap();
        assert_eq!(cert.node_id, 0x0123_4567_89ab_cdef);
        assert_eq!(cert.cluster_id, ca.cluster_id());
        assert_eq!(cert.role, Role::Manager);
        let whole_now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(cert.not_before, whole_now - Duration::from_secs(60));
        assert_eq!(cert.not_after, whole_now + DEFAULT_VALIDITY);
        assert_eq!(
            cert.server_name(),
            format!("0123456789abcdef.{}.shoal", ca.cluster_id())
        );
        assert_eq!(NodeCertificate::parse(&cert.der).unwrap(), cert);
        assert_eq!(NodeCertificate::from_pem(&cert.to_pem()).unwrap(), cert);
        assert_eq!(
            peer_node(&[CertificateDer::from(cert.der.clone())]).unwrap(),
            cert
        );
        assert!(cert.is_valid_at(now));
        assert!(!cert.is_valid_at(now + DEFAULT_VALIDITY + DAY));

        let parsed = parse_x509(&cert.der).unwrap();
        let cn = parsed
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(cn, "0123456789abcdef");
        assert_eq!(
            parsed.issuer().as_raw(),
            parse_x509(ca.cert_der()).unwrap().subject().as_raw()
        );

        let worker = ca
            .issue(&key.csr_der(1).unwrap(), 7, Role::Worker, DAY, now)
            .unwrap();
        assert_eq!(worker.role, Role::Worker);
        assert!(NodeIdentity::new(worker.clone(), key).is_ok());
        let wrong_key = NodeKey::generate().unwrap();
        assert!(matches!(
            NodeIdentity::new(worker, wrong_key),
            Err(PkiError::Key(_))
        ));
    }

    #[test]
    fn pki_tampered_or_garbage_csr_is_refused() {
        let ca = new_ca();
        let key = NodeKey::generate().unwrap();
        let mut csr = key.csr_der(1).unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0x01;
        let err = ca
            .issue(&csr, 1, Role::Worker, DEFAULT_VALIDITY, SystemTime::now())
            .unwrap_err();
        assert!(matches!(err, PkiError::Csr(_)), "{err}");
        assert!(err.to_string().contains("signature"), "{err}");

        for garbage in [&[][..], &[0x30, 0x03, 0x01][..], &[0xff; 64][..]] {
            let err = ca
                .issue(
                    garbage,
                    1,
                    Role::Worker,
                    DEFAULT_VALIDITY,
                    SystemTime::now(),
                )
                .unwrap_err();
            assert!(matches!(err, PkiError::Csr(_)), "{err}");
        }
        let err = ca
            .issue_with_validity(
                &key.csr_der(1).unwrap(),
                1,
                Role::Worker,
                SystemTime::now(),
                SystemTime::now() - DAY,
            )
            .unwrap_err();
        assert!(matches!(err, PkiError::Validity(_)), "{err}");
    }

    #[test]
    fn pki_node_certificate_parse_rejects_non_node_certs() {
        let ca = new_ca();
        let err = NodeCertificate::parse(ca.cert_der()).unwrap_err();
        assert!(err.to_string().contains("CA certificate"), "{err}");
        assert!(NodeCertificate::parse(&[]).is_err());
        assert!(NodeCertificate::parse(&[0x30, 0x82, 0xff]).is_err());

        // Certificates without the shoal subject fields.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(vec!["example.org".to_string()]).unwrap();
        let plain = params.clone().self_signed(&key).unwrap();
        let err = NodeCertificate::parse(plain.der()).unwrap_err();
        assert!(err.to_string().contains("invalid node id"), "{err}");
        params.distinguished_name = DistinguishedName::new();
        let anonymous = params.clone().self_signed(&key).unwrap();
        let err = NodeCertificate::parse(anonymous.der()).unwrap_err();
        assert!(
            err.to_string().contains("subject has no common name"),
            "{err}"
        );
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_hex(1));
        dn.push(DnType::OrganizationalUnitName, "admin");
        params.distinguished_name = dn;
        let bad_role = params.clone().self_signed(&key).unwrap();
        let err = NodeCertificate::parse(bad_role.der()).unwrap_err();
        assert!(err.to_string().contains("invalid role \"admin\""), "{err}");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_hex(1));
        dn.push(DnType::OrganizationalUnitName, "worker");
        dn.push(DnType::OrganizationName, ca.cluster_id().to_string());
        params.distinguished_name = dn;
        let wrong_san = params.self_signed(&key).unwrap();
        let err = NodeCertificate::parse(wrong_san.der()).unwrap_err();
        assert!(
            err.to_string()
                .contains("subject alternative names do not include"),
            "{err}"
        );

        let good = node(&ca, 5, Role::Worker);
        let mut trailing = good.cert.der.clone();
        trailing.push(0);
        let err = NodeCertificate::parse(&trailing).unwrap_err();
        assert!(err.to_string().contains("trailing"), "{err}");
        assert!(peer_node(&[]).is_err());
    }

    #[test]
    fn pki_node_key_pem_round_trip() {
        let key = NodeKey::generate().unwrap();
        let text = key.to_pem();
        let back = NodeKey::from_pem(&text).unwrap();
        assert_eq!(back.key_der(), key.key_der());
        assert!(NodeKey::from_der(&[1, 2, 3]).is_err());
        assert!(NodeKey::from_pem("").is_err());
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    // --- TLS ----------------------------------------------------------------------------------

    #[test]
    fn pki_mutual_tls_between_members() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        let b = node(&ca, 2, Role::Worker);
        let denylist = Denylist::new();
        let server = server_config(&a, ca.cert_der(), denylist.clone(), alpn()).unwrap();
        let client = client_config(&b, ca.cert_der(), denylist, alpn()).unwrap();
        let (c, s) = handshake(client, server, &server_name(1, ca.cluster_id())).unwrap();
        assert_eq!(c.alpn_protocol(), Some(ALPN));
        assert_eq!(s.alpn_protocol(), Some(ALPN));
        let seen_by_server = peer_node(s.peer_certificates().unwrap()).unwrap();
        assert_eq!(seen_by_server.node_id, 2);
        assert_eq!(seen_by_server.role, Role::Worker);
        let seen_by_client = peer_node(c.peer_certificates().unwrap()).unwrap();
        assert_eq!(seen_by_client.node_id, 1);
        assert_eq!(seen_by_client.cluster_id, ca.cluster_id());
    }

    #[test]
    fn pki_client_cert_from_another_ca_is_refused() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        // Same cluster id, different CA: an impostor.
        let impostor_ca = ClusterCa::generate(ca.cluster_id()).unwrap();
        let other_cluster = new_ca();
        for intruder_ca in [&impostor_ca, &other_cluster] {
            let intruder = node(intruder_ca, 9, Role::Manager);
            let server = server_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
            // The intruder trusts our server, to reach the point where it shows its own cert.
            let verifier =
                ClusterServerVerifier::new(ca.cert_der(), ca.cluster_id(), Denylist::new())
                    .unwrap();
            let client = build_client_config(
                Arc::new(verifier),
                Some((
                    intruder.chain(intruder_ca.cert_der()),
                    intruder.key.private_key_der(),
                )),
                alpn(),
            )
            .unwrap();
            let (side, err) =
                handshake(client, server, &server_name(1, ca.cluster_id())).unwrap_err();
            assert_eq!(side, Side::Server);
            // Another cluster's CA is unknown; an impostor CA with our name fails the signature.
            assert!(
                matches!(
                    err,
                    rustls::Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature
                    )
                ),
                "{err}"
            );
        }
    }

    #[test]
    fn pki_expired_client_cert_is_refused() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        let key = NodeKey::generate().unwrap();
        let now = SystemTime::now();
        let cert = ca
            .issue_with_validity(
                &key.csr_der(2).unwrap(),
                2,
                Role::Worker,
                now - 2 * DAY,
                now - DAY,
            )
            .unwrap();
        let expired = NodeIdentity::new(cert, key).unwrap();
        let server = server_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let client = client_config(&expired, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let (side, err) = handshake(client, server, &server_name(1, ca.cluster_id())).unwrap_err();
        assert_eq!(side, Side::Server);
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. }
                )
            ),
            "{err}"
        );
    }

    #[test]
    fn pki_denied_nodes_are_refused_both_ways() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        let b = node(&ca, 2, Role::Worker);
        let name = server_name(1, ca.cluster_id());

        // The server has removed the client.
        let server_denies = Denylist::new();
        server_denies.deny(2);
        let server = server_config(&a, ca.cert_der(), server_denies, alpn()).unwrap();
        let client = client_config(&b, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let (side, err) = handshake(client, server, &name).unwrap_err();
        assert_eq!(side, Side::Server);
        assert!(
            err.to_string().contains("node 0000000000000002 is denied"),
            "{err}"
        );
        assert!(matches!(refusal_reason(&err), Some(PkiError::Denied(2))));

        // The client has removed the server.
        let client_denies = Denylist::new();
        let server = server_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let client = client_config(&b, ca.cert_der(), client_denies.clone(), alpn()).unwrap();
        client_denies.deny(1); // takes effect on configurations already built
        let (side, err) = handshake(client, server, &name).unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            err.to_string().contains("node 0000000000000001 is denied"),
            "{err}"
        );
    }

    #[test]
    fn pki_client_without_certificate_is_let_in_unauthenticated() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        let server = server_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let verifier =
            ClusterServerVerifier::new(ca.cert_der(), ca.cluster_id(), Denylist::new()).unwrap();
        let client = build_client_config(Arc::new(verifier), None, alpn()).unwrap();
        let (_c, s) = handshake(client, server, &server_name(1, ca.cluster_id())).unwrap();
        assert!(s.peer_certificates().is_none());
    }

    #[test]
    fn pki_join_checks_the_ca_digest() {
        let ca = new_ca();
        let manager = node(&ca, 1, Role::Manager);
        let server = || server_config(&manager, ca.cert_der(), Denylist::new(), alpn()).unwrap();

        let client = join_client_config(ca.digest(), alpn()).unwrap();
        let (c, s) = handshake(client, server(), JOIN_SERVER_NAME).unwrap();
        assert!(s.peer_certificates().is_none());
        assert_eq!(
            peer_node(c.peer_certificates().unwrap()).unwrap().node_id,
            1
        );

        let other = new_ca();
        let client = join_client_config(other.digest(), alpn()).unwrap();
        let (side, err) = handshake(client, server(), JOIN_SERVER_NAME).unwrap_err();
        assert_eq!(side, Side::Client);
        let msg = err.to_string();
        assert!(msg.contains("CA certificate digest mismatch"), "{msg}");
        assert!(msg.contains(&hex(&other.digest())), "{msg}");
        assert!(msg.contains(&hex(&ca.digest())), "{msg}");
        assert!(matches!(
            refusal_reason(&err),
            Some(PkiError::CaDigestMismatch { .. })
        ));

        // A worker cannot serve joins.
        let worker = node(&ca, 2, Role::Worker);
        let server = server_config(&worker, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let client = join_client_config(ca.digest(), alpn()).unwrap();
        let (side, err) = handshake(client, server, JOIN_SERVER_NAME).unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(err.to_string().contains("expected manager"), "{err}");

        // A server that does not send the CA certificate is refused.
        let bare = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(manager.cert.der.clone())],
                manager.key.private_key_der(),
            )
            .unwrap();
        let client = join_client_config(ca.digest(), alpn()).unwrap();
        let (side, err) = handshake(client, bare, JOIN_SERVER_NAME).unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(err.to_string().contains("no CA certificate"), "{err}");

        // A forged manager certificate sent along with the genuine CA certificate is refused.
        let impostor_ca = ClusterCa::generate(ca.cluster_id()).unwrap();
        let forged = node(&impostor_ca, 1, Role::Manager);
        let chain = vec![
            CertificateDer::from(forged.cert.der.clone()),
            CertificateDer::from(ca.cert_der().to_vec()),
        ];
        let forged_server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, forged.key.private_key_der())
            .unwrap();
        let client = join_client_config(ca.digest(), alpn()).unwrap();
        let (side, err) = handshake(client, forged_server, JOIN_SERVER_NAME).unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            err.to_string()
                .contains("does not verify against the token's CA"),
            "{err}"
        );
    }

    #[test]
    fn pki_server_name_mismatch_fails() {
        let ca = new_ca();
        let b = node(&ca, 2, Role::Manager);
        let c = node(&ca, 3, Role::Worker);
        // We meant to reach node 1 but node 2 answered.
        let server = server_config(&b, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let client = client_config(&c, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let (side, err) = handshake(client, server, &server_name(1, ca.cluster_id())).unwrap_err();
        assert_eq!(side, Side::Client);
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{err}"
        );
    }

    #[test]
    fn pki_configs_are_accepted_by_quinn() {
        let ca = new_ca();
        let a = node(&ca, 1, Role::Manager);
        let server = server_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let client = client_config(&a, ca.cert_der(), Denylist::new(), alpn()).unwrap();
        let join = join_client_config(ca.digest(), alpn()).unwrap();
        assert!(quinn::crypto::rustls::QuicServerConfig::try_from(server).is_ok());
        assert!(quinn::crypto::rustls::QuicClientConfig::try_from(client).is_ok());
        assert!(quinn::crypto::rustls::QuicClientConfig::try_from(join).is_ok());
    }

    #[test]
    fn pki_configs_refuse_identity_of_another_cluster() {
        let ca = new_ca();
        let other = new_ca();
        let foreign = node(&other, 1, Role::Manager);
        let err = server_config(&foreign, ca.cert_der(), Denylist::new(), alpn()).unwrap_err();
        assert!(matches!(err, PkiError::WrongCluster { .. }), "{err}");
        let err = client_config(&foreign, ca.cert_der(), Denylist::new(), alpn()).unwrap_err();
        assert!(matches!(err, PkiError::WrongCluster { .. }), "{err}");
    }

    // --- renewal ------------------------------------------------------------------------------

    #[test]
    fn pki_renewal_window_is_half_to_four_fifths() {
        let not_before = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let not_after = not_before + DEFAULT_VALIDITY;
        let (start, end) = renewal_window(not_before, not_after);
        assert_eq!(start, not_before + 45 * DAY);
        assert_eq!(end, not_before + 72 * DAY);
        let mut rng = StdRng::seed_from_u64(42);
        for _ in 0..1000 {
            let t = pick_renewal_time(not_before, not_after, &mut rng);
            assert!(start <= t && t <= end);
        }
        // Degenerate periods do not panic.
        assert_eq!(
            renewal_window(not_after, not_before),
            (not_after, not_after)
        );
        assert_eq!(
            pick_renewal_time(not_after, not_before, &mut rng),
            not_after
        );
    }
}
