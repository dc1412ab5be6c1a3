//! Remote management: operators' client certificates drive a 3-manager cluster over TCP with
//! mutual TLS, through contexts, from outside every data directory; a read-only certificate is
//! refused writes; a removed one is refused at once; a certificate or an agent of another
//! cluster is refused at the handshake.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::{free_tcp_port_number, serial, Cluster, Out, SHOAL};

/// Runs the CLI as an operator on another machine would: no data directory of any agent,
/// contexts kept in `home`.
fn operator(home: &Path, args: &[&str]) -> Out {
    let o = Command::new(SHOAL)
        .args(args)
        .env("SHOAL_CONFIG", home.join(".shoal"))
        .env_remove("SHOAL_HOST")
        .env_remove("SHOAL_CONTEXT")
        .env_remove("SHOAL_DATA_DIR")
        .output()
        .expect("run the CLI");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A cluster of `n` managers, each serving the API on a TCP port of its own.
fn cluster_with_api(n: usize) -> (Cluster, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_tcp_port_number()).collect();
    let p = ports.clone();
    let c = Cluster::start_with_args(n, move |i| {
        vec!["--api-addr".into(), format!("127.0.0.1:{}", p[i])]
    });
    c.form(n);
    (c, ports)
}

/// Issues a client certificate on manager `i` (its local socket) into `dir`.
fn issue(c: &Cluster, i: usize, name: &str, role: &str, dir: &Path) -> String {
    c.shoal(
        i,
        &[
            "swarm",
            "ca",
            "client-cert",
            "--name",
            name,
            "--role",
            role,
            "--out",
            dir.to_str().unwrap(),
        ],
    )
    .ok()
}

/// A TLS client presenting `dir`'s certificate that trusts any server: what the agent's own
/// handshake decides about the certificate, whatever the client thinks of the agent.
fn raw_tls_request(port: u16, dir: &Path) -> Result<String, String> {
    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let cert = shoal_transport::pki::certificate_der_from_pem(&cert_pem).unwrap();
    let key = shoal_transport::pki::NodeKey::from_pem(
        &std::fs::read_to_string(dir.join("key.pem")).unwrap(),
    )
    .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(
            vec![cert.into()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.key_der().to_vec().into()),
        )
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.shoal").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /v1/info HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    tls.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    Ok(answer)
}

#[test]
fn operators_drive_a_cluster_remotely_with_client_certificates() {
    let _g = serial();
    let (mut c, ports) = cluster_with_api(3);
    let tmp = c.tmp.path().to_path_buf();
    let home = tmp.join("laptop");
    std::fs::create_dir_all(&home).unwrap();

    // Certificates are issued on a manager; the key is made by the CLI and stays there.
    let alice = tmp.join("alice-tls");
    let said = issue(&c, 1, "alice", "admin", &alice);
    assert!(
        said.starts_with("Client certificate for alice (admin, serial "),
        "{said}"
    );
    assert_eq!(mode(&alice.join("key.pem")), 0o600);
    assert_eq!(mode(&alice), 0o700);
    let bob = tmp.join("bob-tls");
    issue(&c, 0, "bob", "read-only", &bob);
    let ls = c.shoal(2, &["swarm", "ca", "client-cert", "ls"]).ok();
    assert!(ls.starts_with("NAME "), "{ls}");
    assert!(ls.contains("alice") && ls.contains("admin"), "{ls}");
    assert!(ls.contains("bob") && ls.contains("read-only"), "{ls}");
    // A key is never overwritten.
    let err = c
        .shoal(
            0,
            &[
                "swarm",
                "ca",
                "client-cert",
                "--name",
                "x",
                "--out",
                alice.to_str().unwrap(),
            ],
        )
        .err();
    assert!(err.contains("exists"), "{err}");

    // Contexts on the operator's machine.
    let host = |i: usize| format!("tcp://127.0.0.1:{}", ports[i]);
    let out = operator(
        &home,
        &[
            "context",
            "create",
            "prod",
            "--host",
            &host(0),
            "--tls-dir",
            alice.to_str().unwrap(),
            "--description",
            "the cluster",
        ],
    )
    .ok();
    assert_eq!(out.trim(), "prod");
    assert_eq!(mode(&home.join(".shoal/contexts/prod/key.pem")), 0o600);
    operator(
        &home,
        &[
            "context",
            "create",
            "ro",
            "--host",
            &host(2),
            "--tls-dir",
            bob.to_str().unwrap(),
        ],
    )
    .ok();
    assert_eq!(
        operator(&home, &["context", "use", "prod"]).ok().trim(),
        "prod"
    );
    let ls = operator(&home, &["context", "ls"]).ok();
    let current: Vec<&str> = ls.lines().filter(|l| l.contains(" * ")).collect();
    assert_eq!(current.len(), 1, "{ls}");
    assert!(current[0].starts_with("prod *"), "{ls}");
    assert!(current[0].contains("alice (admin, until "), "{ls}");
    assert!(ls.contains("default") && ls.contains(&host(2)), "{ls}");
    assert_eq!(operator(&home, &["context", "show"]).ok().trim(), "prod");

    // An explicit data directory means that local agent, whatever the current context.
    let local_node_id = |out: String| out.lines().find(|l| l.contains(" * ")).map(str::to_string);
    let here = Command::new(SHOAL)
        .arg("--data-dir")
        .arg(&c.nodes[2].dir)
        .args(["node", "ls"])
        .env("SHOAL_CONFIG", home.join(".shoal"))
        .output()
        .unwrap();
    assert_eq!(
        local_node_id(String::from_utf8_lossy(&here.stdout).into_owned()),
        local_node_id(c.shoal(2, &["node", "ls"]).ok())
    );

    // The same commands, the same answers, locally and remotely.
    let local = c.shoal(0, &["node", "ls"]).ok();
    let remote = operator(&home, &["node", "ls"]).ok();
    assert_eq!(remote, local);
    let id = operator(
        &home,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "2",
            "--runtime",
            "process",
            "sleep",
            "1000",
        ],
    )
    .ok();
    assert_eq!(id.trim().len(), 16, "{id}");
    c.wait("web at 3/3 after a remote scale", || {
        let _ = operator(&home, &["service", "scale", "web=3", "-d"]);
        let ls = operator(&home, &["service", "ls"]).ok();
        ls.contains("3/3").then_some(())
    });
    let ids = operator(
        &home,
        &[
            "service",
            "ps",
            "web",
            "--format",
            "{{.Name}} {{.DesiredState}}",
        ],
    )
    .ok();
    assert_eq!(
        ids.lines().filter(|l| l.ends_with(" Running")).count(),
        3,
        "{ids}"
    );
    operator(
        &home,
        &["node", "update", "--label-add", "zone=a", "node-2"],
    )
    .ok();
    let inspected: serde_json::Value =
        serde_json::from_str(&c.shoal(1, &["node", "inspect", "node-2"]).ok()).unwrap();
    assert_eq!(inspected[0]["labels"]["zone"], "a", "{inspected}");

    // Read-only: lists and inspects, refused everything else, and never sees a token.
    let ro = |args: &[&str]| {
        let mut full = vec!["--context", "ro"];
        full.extend_from_slice(args);
        operator(&home, &full)
    };
    assert!(ro(&["service", "ls"]).ok().contains("web"));
    assert!(ro(&["node", "ls"]).ok().contains("node-3"));
    for write in [
        &["service", "rm", "web"][..],
        &["service", "create", "--name", "x", "sleep", "1"],
        &["node", "update", "--label-add", "a=b", "node-1"],
        &["swarm", "join-token", "manager"],
        &["swarm", "ca", "client-cert", "rm", "alice"],
    ] {
        let err = ro(write).err();
        assert!(err.contains("is read-only"), "{write:?}: {err}");
    }
    assert_eq!(
        operator(&home, &["service", "ls", "-q"])
            .ok()
            .lines()
            .count(),
        1
    );

    // Removed: refused from the next request on, on every manager.
    operator(&home, &["swarm", "ca", "client-cert", "rm", "bob"]).ok();
    c.wait("bob refused", || {
        let out = ro(&["node", "ls"]);
        (out.code != 0 && out.stderr.contains("was removed from the swarm")).then_some(())
    });

    // A flood of connections that never finish the handshake, more than the agent serves at
    // once, all from one address: the agent keeps a few for it and still serves the operator.
    let flood = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut held = Vec::new();
            for _ in 0..shoal_agent::remote::MAX_API_CONNECTIONS + 40 {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
                if let Ok(s) = socket
                    .connect(format!("127.0.0.1:{}", ports[1]).parse().unwrap())
                    .await
                {
                    held.push(s.into_std().unwrap());
                }
            }
            held
        });
    assert!(
        flood.len() > shoal_agent::remote::MAX_API_CONNECTIONS,
        "{}",
        flood.len()
    );
    let out = operator(
        &home,
        &[
            "-H",
            &host(1),
            "--tls-dir",
            alice.to_str().unwrap(),
            "node",
            "ls",
        ],
    );
    assert_eq!(out.code, 0, "served during a flood: {}", out.stderr);
    drop(flood);

    // Another cluster: its agent is refused by the operator, and its operator by ours.
    let (other, other_ports) = cluster_with_api(1);
    let mallory = tmp.join("mallory-tls");
    issue(&other, 0, "mallory", "admin", &mallory);
    let err = operator(
        &home,
        &[
            "-H",
            &host(0),
            "--tls-dir",
            mallory.to_str().unwrap(),
            "node",
            "ls",
        ],
    )
    .err();
    assert!(
        err.contains("TLS with the shoal agent at")
            && err.contains("not a node of this context's cluster"),
        "{err}"
    );
    let refused = raw_tls_request(ports[0], &mallory);
    assert!(refused.is_err(), "{refused:?}");
    // The same raw client with our own operator's certificate is answered.
    let answered = raw_tls_request(ports[0], &alice).unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    drop(other);
    let _ = other_ports;

    // Several managers in one context: the first that accepts a connection answers, so the
    // operator goes on when the manager they used dies.
    let all = format!("{},{},{}", host(0), host(1), host(2));
    operator(
        &home,
        &[
            "context",
            "create",
            "ha",
            "--host",
            &all,
            "--tls-dir",
            alice.to_str().unwrap(),
        ],
    )
    .ok();
    let ls = operator(&home, &["context", "ls"]).ok();
    assert!(ls.contains(&all), "{ls}");
    c.kill(0);
    c.wait("the swarm answering through the other managers", || {
        let out = operator(&home, &["--context", "ha", "node", "ls"]);
        (out.code == 0 && out.stdout.contains("Leader")).then_some(out.stdout)
    });
    let err = operator(
        &home,
        &[
            "-H",
            &host(0),
            "--tls-dir",
            alice.to_str().unwrap(),
            "node",
            "ls",
        ],
    )
    .err();
    assert!(
        err.contains("cannot connect to the shoal agent at"),
        "{err}"
    );

    // Back to the local agent.
    operator(&home, &["context", "use", "default"]).ok();
    let err = operator(&home, &["node", "ls"]).err();
    assert!(err.contains("cannot connect to the shoal agent"), "{err}");
    let err = operator(&home, &["context", "rm", "nope"]).err();
    assert!(err.contains("does not exist"), "{err}");
    operator(&home, &["context", "rm", "prod", "ro"]).ok();
    let _: PathBuf = home;
}
