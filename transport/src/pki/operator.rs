//! Operators' client certificates, for the control API over TCP (`shoal agent --api-addr`).
//!
//! A manager issues them from a certificate signing request made on the operator's machine (the
//! key never leaves it). An operator certificate names:
//!
//! * the operator (CN, e.g. `alice`: letters, digits, `.`, `_`, `-`, at most 64),
//! * what it may do (OU, `admin` or `read-only`),
//! * the cluster id (O),
//!
//! and carries no DNS name and only the TLS client authentication usage, so it cannot pass for
//! a node certificate (whose OU is `manager` or `worker`) nor the reverse. The agent checks on
//! every request that the certificate's serial is still in the cluster's list of operators
//! (removal), on top of the chain, validity and cluster checks of the handshake.

use super::*;

/// The longest operator name accepted.
pub const MAX_OPERATOR_NAME: usize = 64;

/// What an operator certificate allows on the control API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Access {
    /// Everything the local socket allows.
    Admin,
    /// Listing and inspecting only: no change, no join token, no unlock key.
    ReadOnly,
}

impl Access {
    /// The name used in certificates and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            Access::Admin => "admin",
            Access::ReadOnly => "read-only",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Access {
    type Err = PkiError;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "admin" => Ok(Access::Admin),
            "read-only" => Ok(Access::ReadOnly),
            other => Err(PkiError::Certificate(format!(
                "invalid access {other:?}: expected \"admin\" or \"read-only\""
            ))),
        }
    }
}

/// Checks an operator name: 1 to [`MAX_OPERATOR_NAME`] characters, ASCII letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit.
pub fn validate_operator_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the operator name is empty".into());
    }
    if name.len() > MAX_OPERATOR_NAME {
        return Err(format!(
            "the operator name is longer than {MAX_OPERATOR_NAME} characters"
        ));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!(
            "invalid operator name {name:?}: it must start with a letter or a digit"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid operator name {name:?}: {bad:?} is not allowed (letters, digits, '.', '_', '-')"
        ));
    }
    Ok(())
}

/// An operator's client certificate, with the fields shoal reads from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorCertificate {
    /// The certificate, DER-encoded.
    pub der: Vec<u8>,
    /// The operator (CN).
    pub name: String,
    /// What it may do (OU).
    pub access: Access,
    /// The cluster it belongs to (O).
    pub cluster_id: ClusterId,
    /// The serial number, lowercase hex: what the cluster's list of operators records.
    pub serial: String,
    /// Start of validity (whole seconds).
    pub not_before: SystemTime,
    /// End of validity (whole seconds).
    pub not_after: SystemTime,
}

impl OperatorCertificate {
    /// Parses a DER operator certificate. Fails on a CA or node certificate, and when the name,
    /// access or cluster is missing, repeated or malformed. The signature is not checked here.
    pub fn parse(der: &[u8]) -> Result<Self> {
        let cert = parse_x509(der)?;
        if cert.is_ca() {
            return Err(PkiError::Certificate(
                "this is a CA certificate, not an operator certificate".to_string(),
            ));
        }
        let subject = cert.subject();
        let ou = single_attribute(subject.iter_organizational_unit(), "organizational unit")?;
        let access: Access = match ou.parse() {
            Ok(access) => access,
            Err(_) if ou.parse::<Role>().is_ok() => {
                return Err(PkiError::Certificate(
                    "this is a node certificate, not an operator certificate".to_string(),
                ))
            }
            Err(e) => return Err(e),
        };
        let name = single_attribute(subject.iter_common_name(), "common name (operator)")?;
        validate_operator_name(name).map_err(PkiError::Certificate)?;
        let cluster_id: ClusterId =
            single_attribute(subject.iter_organization(), "organization (cluster id)")?
                .parse()
                .map_err(|e: PkiError| PkiError::Certificate(e.to_string()))?;
        let validity = cert.validity();
        let not_before = from_unix_secs(validity.not_before.timestamp())
            .ok_or_else(|| PkiError::Certificate("not_before is out of range".to_string()))?;
        let not_after = from_unix_secs(validity.not_after.timestamp())
            .ok_or_else(|| PkiError::Certificate("not_after is out of range".to_string()))?;
        Ok(OperatorCertificate {
            der: der.to_vec(),
            name: name.to_string(),
            access,
            cluster_id,
            serial: hex(cert.raw_serial()),
            not_before,
            not_after,
        })
    }

    /// The certificate as PEM text.
    pub fn to_pem(&self) -> String {
        pem_encode(PEM_CERTIFICATE, &self.der)
    }

    /// Reads the only `CERTIFICATE` block of PEM text and parses it.
    pub fn from_pem(text: &str) -> Result<Self> {
        Self::parse(&pem_single(text, PEM_CERTIFICATE)?)
    }

    /// Whether `now` lies inside the validity period.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// The operator's certificate among those a client presented (the end-entity comes first).
pub fn peer_operator(conn_certs: &[CertificateDer<'_>]) -> Result<OperatorCertificate> {
    let end_entity = conn_certs
        .first()
        .ok_or_else(|| PkiError::Certificate("the client presented no certificate".to_string()))?;
    OperatorCertificate::parse(end_entity)
}

impl ClusterCa {
    /// Issues an operator certificate for the public key of `csr_der` (whose self-signature
    /// must verify), valid from one minute before `now` for `validity`. The requested subject
    /// is ignored: CN = `name`, OU = `access`, O = the cluster id.
    pub fn issue_operator(
        &self,
        csr_der: &[u8],
        name: &str,
        access: Access,
        validity: Duration,
        now: SystemTime,
    ) -> Result<OperatorCertificate> {
        validate_operator_name(name).map_err(PkiError::Certificate)?;
        let public_key = verified_csr_key(csr_der)?;
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .ok_or_else(|| PkiError::Validity("now is out of range".to_string()))?;
        let not_after = now
            .checked_add(validity)
            .ok_or_else(|| PkiError::Validity("now + validity is out of range".to_string()))?;
        let start = to_x509_time(not_before, "not_before")?;
        let end = to_x509_time(not_after, "not_after")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationalUnitName, access.as_str());
        dn.push(DnType::OrganizationName, self.cluster_id.to_string());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = start;
        params.not_after = end;
        let cert = params.signed_by(&public_key, &self.issuer, &self.key)?;
        OperatorCertificate::parse(cert.der())
    }
}

impl NodeKey {
    /// A certificate signing request for an operator certificate (the CA assigns the subject).
    pub fn operator_csr_der(&self, name: &str) -> Result<Vec<u8>> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        Ok(params.serialize_request(&self.pair)?.der().to_vec())
    }
}

/// Checks an operator certificate whose chain has already been verified: an operator (not a
/// node) of `cluster_id`.
pub(super) fn check_operator(end_entity: &CertificateDer<'_>, cluster_id: ClusterId) -> Result<()> {
    let operator = OperatorCertificate::parse(end_entity)?;
    if operator.cluster_id != cluster_id {
        return Err(PkiError::WrongCluster {
            expected: cluster_id,
            found: operator.cluster_id,
        });
    }
    Ok(())
}

/// The TLS configuration of the control API on TCP: presents the node's certificate and the CA,
/// and requires an operator certificate of this cluster (see the module documentation).
pub fn api_server_config(identity: &NodeIdentity, ca_der: &[u8]) -> Result<rustls::ServerConfig> {
    let cluster_id = identity_cluster(identity, ca_der)?;
    let verifier =
        ClusterClientVerifier::new(ca_der, cluster_id, Denylist::new(), Clients::Operators)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(identity.chain(ca_der), identity.key.private_key_der())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // No resumption: every connection shows its certificate again.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(config)
}

/// The TLS configuration with which an operator's CLI reaches an agent's control API: trusts
/// only the cluster CA `ca_der` and presents `cert` with `key`.
pub fn api_client_config(
    ca_der: &[u8],
    cert: &OperatorCertificate,
    key: &NodeKey,
) -> Result<rustls::ClientConfig> {
    let cluster_id = cluster_of_ca(ca_der)?;
    if cert.cluster_id != cluster_id {
        return Err(PkiError::WrongCluster {
            expected: cluster_id,
            found: cert.cluster_id,
        });
    }
    let parsed = parse_x509(&cert.der)?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::Key(
            "the key does not match the operator certificate".to_string(),
        ));
    }
    let verifier = NodeServerVerifier {
        ca: TrustedCa::Der(ca_der.to_vec()),
        role: None,
        provider: provider(),
    };
    build_client_config(
        Arc::new(verifier),
        Some((
            vec![
                CertificateDer::from(cert.der.clone()),
                CertificateDer::from(ca_der.to_vec()),
            ],
            key.private_key_der(),
        )),
        vec![b"http/1.1".to_vec()],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);

    fn node(ca: &ClusterCa, role: Role) -> NodeIdentity {
        let key = NodeKey::generate().unwrap();
        let csr = key.csr_der(7).unwrap();
        let cert = ca.issue(&csr, 7, role, DAY, SystemTime::now()).unwrap();
        NodeIdentity::new(cert, key).unwrap()
    }

    fn operator(ca: &ClusterCa, name: &str, access: Access) -> (OperatorCertificate, NodeKey) {
        let key = NodeKey::generate().unwrap();
        let csr = key.operator_csr_der(name).unwrap();
        let cert = ca
            .issue_operator(&csr, name, access, DAY, SystemTime::now())
            .unwrap();
        (cert, key)
    }

    /// Runs a TLS handshake in memory; the error of whichever side failed.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
    ) -> std::result::Result<Vec<CertificateDer<'static>>, rustls::Error> {
        let name = ServerName::try_from("198.51.100.7").unwrap();
        let mut c = ClientConnection::new(Arc::new(client), name)?;
        let mut s = ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s.peer_certificates().unwrap_or_default().to_vec());
            }
        }
        Err(rustls::Error::General(
            "the handshake did not finish".into(),
        ))
    }

    #[test]
    fn operator_certificates_carry_name_access_and_cluster() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let (cert, _) = operator(&ca, "alice", Access::ReadOnly);
        assert_eq!(cert.name, "alice");
        assert_eq!(cert.access, Access::ReadOnly);
        assert_eq!(cert.cluster_id, ca.cluster_id());
        assert_eq!(cert.serial.len(), 32);
        assert!(cert.is_valid_at(SystemTime::now()));
        assert_eq!(OperatorCertificate::from_pem(&cert.to_pem()).unwrap(), cert);
        // Node and operator certificates cannot be taken for one another.
        let n = node(&ca, Role::Manager);
        let e = OperatorCertificate::parse(&n.cert.der).unwrap_err();
        assert!(e.to_string().contains("node certificate"), "{e}");
        assert!(NodeCertificate::parse(&cert.der).is_err());
        let key = NodeKey::generate().unwrap();
        let csr = key.operator_csr_der("x").unwrap();
        for bad in ["", "-x", "a b", "é", &"a".repeat(65)] {
            assert!(ca
                .issue_operator(&csr, bad, Access::Admin, DAY, SystemTime::now())
                .is_err());
        }
        assert_eq!("read-only".parse::<Access>().unwrap(), Access::ReadOnly);
        assert!("root".parse::<Access>().is_err());
    }

    #[test]
    fn the_api_handshake_wants_an_operator_of_this_cluster() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let agent = node(&ca, Role::Worker);
        let server = || api_server_config(&agent, ca.cert_der()).unwrap();
        let (cert, key) = operator(&ca, "alice", Access::Admin);
        let seen = handshake(
            api_client_config(ca.cert_der(), &cert, &key).unwrap(),
            server(),
        )
        .unwrap();
        assert_eq!(peer_operator(&seen).unwrap().name, "alice");

        // An operator of another cluster is refused by the agent.
        let other = ClusterCa::generate(ClusterId::random()).unwrap();
        let (stranger, skey) = operator(&other, "mallory", Access::Admin);
        let client = api_client_config(other.cert_der(), &stranger, &skey).unwrap();
        assert!(handshake(client, server()).is_err());
        // ... and the operator refuses an agent of another cluster.
        let foreign_agent = node(&other, Role::Manager);
        let e = handshake(
            api_client_config(ca.cert_der(), &cert, &key).unwrap(),
            api_server_config(&foreign_agent, other.cert_der()).unwrap(),
        )
        .unwrap_err();
        assert!(refusal_reason(&e).is_some(), "{e}");
        // A key that is not the certificate's is refused before any connection.
        assert!(api_client_config(ca.cert_der(), &cert, &skey).is_err());

        // A client that trusts this agent but presents another cluster's operator certificate,
        // or a node certificate of this cluster, is refused by the agent's handshake.
        let trusting = |chain: Vec<CertificateDer<'static>>, key: &NodeKey| {
            let verifier = NodeServerVerifier {
                ca: TrustedCa::Der(ca.cert_der().to_vec()),
                role: None,
                provider: provider(),
            };
            build_client_config(
                Arc::new(verifier),
                Some((chain, key.private_key_der())),
                vec![b"http/1.1".to_vec()],
            )
            .unwrap()
        };
        let foreign = trusting(vec![CertificateDer::from(stranger.der.clone())], &skey);
        assert!(handshake(foreign, server()).is_err());
        let member = node(&ca, Role::Manager);
        let as_node = trusting(member.chain(ca.cert_der()), &member.key);
        assert!(handshake(as_node, server()).is_err());
        let own = trusting(vec![CertificateDer::from(cert.der.clone())], &key);
        assert!(handshake(own, server()).is_ok());
    }

    #[test]
    fn expired_operator_certificates_are_refused_at_the_handshake() {
        let ca = ClusterCa::generate(ClusterId::random()).unwrap();
        let agent = node(&ca, Role::Manager);
        let key = NodeKey::generate().unwrap();
        let csr = key.operator_csr_der("old").unwrap();
        let long_ago = SystemTime::now() - 10 * DAY;
        let cert = ca
            .issue_operator(&csr, "old", Access::Admin, DAY, long_ago)
            .unwrap();
        let client = api_client_config(ca.cert_der(), &cert, &key).unwrap();
        let e = handshake(client, api_server_config(&agent, ca.cert_der()).unwrap()).unwrap_err();
        assert!(e.to_string().to_lowercase().contains("expired"), "{e}");
    }
}
