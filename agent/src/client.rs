//! The CLI's side of the control API: an HTTP/1.1 client (hyper) that reaches an agent over its
//! Unix socket, over TCP with mutual TLS (`shoal agent --api-addr`, an operator's context), or
//! over plain TCP (`--metrics-addr`, the web view on loopback).
//!
//! One request per connection, one overall deadline per request ([`REQUEST_TIMEOUT`] unless the
//! caller gives another). The answer is read in full (at most [`MAX_RESPONSE_BYTES`]) and its
//! JSON body is decoded into a [`Response`] whatever the status: the agent reports refusals as
//! [`Response::Error`] with a 4xx/5xx status. Everything read is untrusted: sizes are bounded
//! and every problem becomes a one-line [`ClientError`].

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, ACCEPT, CONNECTION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use shoal_transport::pki::{self, NodeKey, OperatorCertificate};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::api::Response;

/// Largest answer body accepted.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// How long one request may take, connection and TLS handshake included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// How long to wait for a TCP connection to one of several managers before trying the next
/// (a host that is down may drop the SYN rather than refuse it).
pub const FAILOVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The TLS server name sent to a remote agent. It is not checked: the agent proves it is a node
/// of the operator's cluster with a certificate signed by the cluster CA.
const TLS_SERVER_NAME: &str = "api.shoal";

/// Where an agent's control API is.
#[derive(Clone)]
pub enum Endpoint {
    /// The agent's Unix socket, on this machine.
    Unix(PathBuf),
    /// An agent's `--api-addr`, reached with an operator certificate (mutual TLS); with several
    /// addresses, the first one that accepts a connection.
    Tls(Arc<Remote>),
    /// Plain HTTP on TCP, `HOST:PORT` (the metrics address, the web view on loopback).
    Http(String),
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Endpoint({self})")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Tls(remote) => {
                let urls: Vec<String> = remote.addrs.iter().map(|(h, p)| tcp_url(h, *p)).collect();
                write!(f, "{}", urls.join(","))
            }
            Endpoint::Http(addr) => write!(f, "http://{addr}"),
        }
    }
}

impl From<&Path> for Endpoint {
    fn from(path: &Path) -> Self {
        Endpoint::Unix(path.to_path_buf())
    }
}

impl From<&PathBuf> for Endpoint {
    fn from(path: &PathBuf) -> Self {
        Endpoint::Unix(path.clone())
    }
}

impl From<PathBuf> for Endpoint {
    fn from(path: PathBuf) -> Self {
        Endpoint::Unix(path)
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(e: &Endpoint) -> Self {
        e.clone()
    }
}

/// `tcp://host:port`, with an IPv6 host in brackets.
fn tcp_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp://[{host}]:{port}")
    } else {
        format!("tcp://{host}:{port}")
    }
}

/// A remote agent (or several managers of one swarm, tried in order) and the operator
/// credentials that reach it.
pub struct Remote {
    /// Host name or IP address, and TCP port, of each agent; never empty.
    pub addrs: Vec<(String, u16)>,
    /// The operator certificate presented.
    pub operator: OperatorCertificate,
    config: Arc<rustls::ClientConfig>,
}

impl Remote {
    /// Credentials from PEM text: the cluster CA certificate, the operator's certificate and
    /// its private key. Fails (with the reason) when they do not belong together.
    pub fn new(
        addrs: Vec<(String, u16)>,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Remote, String> {
        let ca = pki::certificate_der_from_pem(ca_pem)
            .map_err(|e| format!("the CA certificate: {e}"))?;
        let operator = OperatorCertificate::from_pem(cert_pem)
            .map_err(|e| format!("the client certificate: {e}"))?;
        let key = NodeKey::from_pem(key_pem).map_err(|e| format!("the client key: {e}"))?;
        let config = pki::api_client_config(&ca, &operator, &key).map_err(|e| e.to_string())?;
        if addrs.is_empty() || addrs.iter().any(|(h, _)| h.is_empty()) {
            return Err("the host is empty".into());
        }
        Ok(Remote {
            addrs,
            operator,
            config: Arc::new(config),
        })
    }
}

/// Splits `tcp://HOST:PORT[,tcp://HOST:PORT…]` (several managers of one swarm) into hosts and
/// ports.
pub fn parse_tcp_urls(urls: &str) -> Result<Vec<(String, u16)>, String> {
    const MAX_HOSTS: usize = 16;
    let list: Vec<&str> = urls.split(',').map(str::trim).collect();
    if list.len() > MAX_HOSTS {
        return Err(format!("too many hosts in {urls:?}: at most {MAX_HOSTS}"));
    }
    list.into_iter().map(parse_tcp_url).collect()
}

/// Splits `tcp://HOST:PORT` (IPv6 in brackets) into host and port.
pub fn parse_tcp_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("invalid host {url:?}: expected tcp://HOST:PORT"))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, port) = v6
            .split_once("]:")
            .ok_or_else(|| format!("invalid host {url:?}: expected tcp://[IPv6]:PORT"))?;
        (host, port)
    } else {
        rest.rsplit_once(':')
            .ok_or_else(|| format!("invalid host {url:?}: the port is missing"))?
    };
    if host.is_empty() || host.contains(['/', '@', '?', '#', ' ']) {
        return Err(format!("invalid host {url:?}"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port in {url:?}"))?;
    Ok((host.to_string(), port))
}

/// Why a call to the agent failed (before any answer of the agent could be decoded).
#[derive(Debug, Error)]
pub enum ClientError {
    /// The connection could not be opened.
    #[error("cannot connect to the shoal agent at {agent}: {} ({hint})", os_message(.source))]
    Connect {
        /// The agent (socket path or URL).
        agent: String,
        /// What `connect` said.
        source: io::Error,
        /// What to check.
        hint: &'static str,
    },
    /// The TLS handshake failed: the agent refused the client's certificate, or the agent is
    /// not a node of the client's cluster.
    #[error("TLS with the shoal agent at {agent} failed: {reason}")]
    Tls {
        /// The agent's URL.
        agent: String,
        /// Who refused what.
        reason: String,
    },
    /// Sending the request or receiving the answer failed halfway.
    #[error("lost the connection to the shoal agent at {agent}: {}", os_message(.source))]
    Io {
        /// The agent (socket path or URL).
        agent: String,
        /// What the read or write said.
        source: io::Error,
    },
    /// The agent did not answer in time.
    #[error(
        "the shoal agent at {agent} did not answer within {} s",
        .after.as_secs_f64()
    )]
    Timeout {
        /// The agent (socket path or URL).
        agent: String,
        /// How long it waited.
        after: Duration,
    },
    /// The request could not be built.
    #[error("cannot send the request: {0}")]
    Request(String),
    /// The answer is larger than [`MAX_RESPONSE_BYTES`].
    #[error("response from the agent is larger than {} MiB", MAX_RESPONSE_BYTES >> 20)]
    TooLarge,
    /// The answer is not HTTP/1.x, or its body is not a [`Response`].
    #[error("malformed response from the agent: {0}")]
    Malformed(String),
    /// An error status whose body is not a [`Response`] (a rejection by the HTTP layer itself,
    /// e.g. an unknown route).
    #[error("the agent answered HTTP {status}: {text}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the body (or the reason phrase), on one line.
        text: String,
    },
}

/// An `io::Error`'s message without the ` (os error N)` suffix.
fn os_message(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(short) => short.to_string(),
            None => text,
        },
        None => text,
    }
}

/// What to suggest when the agent cannot be reached.
fn connect_hint(endpoint: &Endpoint, e: &io::Error) -> &'static str {
    match (endpoint, e.kind()) {
        (Endpoint::Unix(_), io::ErrorKind::PermissionDenied) => "do you have permission to use it?",
        (Endpoint::Unix(_), _) => "is `shoal agent` running?",
        (Endpoint::Tls(_), _) => "is the agent running with --api-addr on that address?",
        (Endpoint::Http(_), _) => "is the agent serving that address?",
    }
}
/// Percent-encodes one path segment (e.g. a node name): every byte of its UTF-8 form except the
/// unreserved characters `A-Z a-z 0-9 - . _ ~` becomes `%XX`. The dot segments `.` and `..` are
/// encoded entirely so that no one can read them as relative paths.
pub fn encode_segment(s: &str) -> String {
    let dot_segment = s == "." || s == "..";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let unreserved = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if unreserved && !dot_segment {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Sends one request to the agent at `endpoint` (a socket path, or an [`Endpoint`]) and returns
/// its answer.
///
/// `path` is the route with its query string (`/v1/nodes?stale=true`); its segments must already
/// be encoded with [`encode_segment`]. `body`, if any, is sent as JSON.
pub fn call(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response, ClientError> {
    decode(exchange(endpoint, method, path, body)?)
}

/// Sends one request and returns the raw answer (status and body), for routes that do not
/// answer JSON (`GET /metrics`).
pub fn exchange(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<HttpResponse, ClientError> {
    exchange_within(endpoint, method, path, body, REQUEST_TIMEOUT)
}

/// [`call`] with `timeout` for the whole request instead of [`REQUEST_TIMEOUT`] (test clients
/// that must tell an unknown outcome from a slow one).
pub fn call_within(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    decode(exchange_within(endpoint, method, path, body, timeout)?)
}

/// [`exchange`] with `timeout` for the whole request instead of [`REQUEST_TIMEOUT`].
pub fn exchange_within(
    endpoint: impl Into<Endpoint>,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let endpoint = endpoint.into();
    let request = build_request(method, path, body)?;
    block_on(async move {
        match tokio::time::timeout(timeout, send(&endpoint, request)).await {
            Ok(answer) => answer,
            Err(_) => Err(ClientError::Timeout {
                agent: endpoint.to_string(),
                after: timeout,
            }),
        }
    })
}

/// Runs a request on a runtime of its own (the CLI is synchronous); from inside a runtime, on a
/// thread of its own, since a runtime cannot be started or dropped there.
fn block_on<T: Send>(
    fut: impl Future<Output = Result<T, ClientError>> + Send,
) -> Result<T, ClientError> {
    let run = move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Request(format!("cannot start the client: {e}")))?
            .block_on(fut)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err(ClientError::Request("the client thread panicked".into())))
        })
    } else {
        run()
    }
}

/// Connects and exchanges one request.
async fn send(
    endpoint: &Endpoint,
    request: hyper::Request<Full<Bytes>>,
) -> Result<HttpResponse, ClientError> {
    let connect_error = |source: io::Error| ClientError::Connect {
        agent: endpoint.to_string(),
        hint: connect_hint(endpoint, &source),
        source,
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(connect_error)?;
            over(endpoint, stream, request).await
        }
        Endpoint::Http(addr) => {
            let stream = tokio::net::TcpStream::connect(addr.as_str())
                .await
                .map_err(connect_error)?;
            let _ = stream.set_nodelay(true);
            over(endpoint, stream, request).await
        }
        Endpoint::Tls(remote) => {
            let (stream, one) = connect_first(remote).await.map_err(connect_error)?;
            // Errors from here on name the agent that answered.
            let endpoint = &one;
            let _ = stream.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(TLS_SERVER_NAME)
                .map_err(|e| ClientError::Request(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(remote.config.clone())
                .connect(name, stream)
                .await
                .map_err(|e| io_error(endpoint, e))?;
            over(endpoint, tls, request).await
        }
    }
}

/// A TCP connection to the first of `remote`'s agents that accepts one (each given
/// [`FAILOVER_CONNECT_TIMEOUT`] when there are several), with that agent as an endpoint of
/// its own. Only a failed connection moves on: nothing has been sent, so nothing can be done
/// twice. With every agent down, the last error.
async fn connect_first(remote: &Arc<Remote>) -> io::Result<(tokio::net::TcpStream, Endpoint)> {
    let several = remote.addrs.len() > 1;
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no address");
    for (host, port) in &remote.addrs {
        let connect = tokio::net::TcpStream::connect((host.as_str(), *port));
        let result = if several {
            tokio::time::timeout(FAILOVER_CONNECT_TIMEOUT, connect)
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
        } else {
            connect.await
        };
        match result {
            Ok(stream) => {
                let one = if several {
                    Endpoint::Tls(Arc::new(Remote {
                        addrs: vec![(host.clone(), *port)],
                        operator: remote.operator.clone(),
                        config: remote.config.clone(),
                    }))
                } else {
                    Endpoint::Tls(remote.clone())
                };
                return Ok((stream, one));
            }
            Err(e) => {
                if several {
                    tracing::debug!("{}: {e}; trying the next manager", tcp_url(host, *port));
                }
                last = e;
            }
        }
    }
    Err(last)
}

/// One HTTP/1.1 exchange on an open stream.
async fn over<S>(
    endpoint: &Endpoint,
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<HttpResponse, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| hyper_error(endpoint, &e))?;
    let driver = tokio::spawn(connection);
    let answer = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| hyper_error(endpoint, &e))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ClientError::TooLarge
                } else {
                    boxed_error(endpoint, e.as_ref())
                }
            })?
            .to_bytes();
        Ok(HttpResponse {
            status,
            body: body.to_vec(),
        })
    }
    .await;
    driver.abort();
    answer
}

/// The rustls error somewhere in an error's chain, if any.
fn find_tls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner);
        }
        current = err.source();
    }
    None
}

/// The io::Error somewhere in an error's chain, if any.
fn find_io<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a io::Error> {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io);
        }
        current = err.source();
    }
    None
}

/// A TLS failure in words an operator can act on.
fn tls_reason(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    if let Some(why) = pki::refusal_reason(e) {
        return format!("the agent is not a node of this context's cluster: {why}");
    }
    match e {
        rustls::Error::AlertReceived(
            A::BadCertificate | A::UnknownCA | A::CertificateUnknown | A::AccessDenied,
        ) => "the agent refused this client's certificate (is it an operator certificate of this cluster?)".into(),
        rustls::Error::AlertReceived(A::CertificateExpired) => {
            "the agent refused this client's certificate: it has expired".into()
        }
        rustls::Error::AlertReceived(A::CertificateRequired) => {
            "the agent requires a client certificate".into()
        }
        rustls::Error::InvalidCertificate(c) => format!("the agent's certificate is invalid: {c:?}"),
        other => other.to_string(),
    }
}

fn io_error(endpoint: &Endpoint, e: io::Error) -> ClientError {
    if let Some(tls) = find_tls(&e) {
        return ClientError::Tls {
            agent: endpoint.to_string(),
            reason: tls_reason(tls),
        };
    }
    ClientError::Io {
        agent: endpoint.to_string(),
        source: e,
    }
}

fn boxed_error(endpoint: &Endpoint, e: &(dyn StdError + Send + Sync + 'static)) -> ClientError {
    match e.downcast_ref::<hyper::Error>() {
        Some(h) => hyper_error(endpoint, h),
        None => ClientError::Malformed(e.to_string()),
    }
}

fn hyper_error(endpoint: &Endpoint, e: &hyper::Error) -> ClientError {
    if let Some(tls) = find_tls(e) {
        return ClientError::Tls {
            agent: endpoint.to_string(),
            reason: tls_reason(tls),
        };
    }
    let truncated = find_io(e).is_some_and(|io| io.kind() == io::ErrorKind::UnexpectedEof);
    if e.is_incomplete_message() || truncated {
        return ClientError::Malformed(
            "the connection was closed before the end of the answer".into(),
        );
    }
    if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
        return ClientError::Malformed(format!("{e}"));
    }
    if let Some(io) = find_io(e) {
        if matches!(
            io.kind(),
            io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
        ) {
            // hyper reports a malformed body (a bad chunk) as invalid data.
            return ClientError::Malformed(io.to_string());
        }
        return ClientError::Io {
            agent: endpoint.to_string(),
            source: io::Error::new(io.kind(), io.to_string()),
        };
    }
    ClientError::Malformed(e.to_string())
}

/// A new request id: this process's random client id and the next sequence number (each
/// write of the CLI gets its own; the agents retry a forwarded write with the same one).
pub fn request_id() -> shoal_cluster::RequestId {
    static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    shoal_cluster::RequestId {
        client: *CLIENT.get_or_init(rand::random),
        seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }
}

/// One request, checked.
fn build_request(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<hyper::Request<Full<Bytes>>, ClientError> {
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ClientError::Request(format!("invalid method {method:?}")));
    }
    if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(ClientError::Request(format!("invalid path {path:?}")));
    }
    let body = match body {
        Some(value) => {
            serde_json::to_vec(value).map_err(|e| ClientError::Request(e.to_string()))?
        }
        None => Vec::new(),
    };
    let json = HeaderValue::from_static("application/json");
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "shoal")
        .header(CONNECTION, "close")
        .header(ACCEPT, json.clone())
        .header(CONTENT_TYPE, json);
    // Writes carry a request id, so that the agents' retries of the same request are applied
    // once.
    let writes = method != "GET" || path.contains("rotate=true");
    if writes {
        request = request.header(crate::control::REQUEST_ID_HEADER, request_id().to_string());
    }
    request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Request(e.to_string()))
}

/// An HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// The [`Response`] in an answer's body.
fn decode(response: HttpResponse) -> Result<Response, ClientError> {
    match serde_json::from_slice::<Response>(&response.body) {
        Ok(decoded) => Ok(decoded),
        Err(e) if (200..300).contains(&response.status) => Err(ClientError::Malformed(format!(
            "HTTP {}: the body is not a control API answer ({e})",
            response.status
        ))),
        Err(_) => {
            let text = String::from_utf8_lossy(&response.body);
            let text: Vec<&str> = text
                .split(char::is_control)
                .map(str::trim)
                .filter(|part| !part.is_empty())
                .collect();
            let text = text.join(" ");
            let mut short: String = text.chars().take(200).collect();
            if text.chars().nth(200).is_some() {
                short.push('…');
            }
            if short.is_empty() {
                short = "(no details)".into();
            }
            Err(ClientError::Status {
                status: response.status,
                text: short,
            })
        }
    }
}

/// A fake agent on a Unix socket, for tests of this module and of the CLI.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    /// A request as the fake agent saw it.
    #[derive(Debug)]
    pub struct Seen {
        /// `GET`, …
        pub method: String,
        /// The request target.
        pub path: String,
        /// Header lines, as sent.
        pub headers: Vec<String>,
        /// The body.
        pub body: Vec<u8>,
    }

    /// The fake agent: its socket, and the thread that returns what it saw.
    pub struct FakeAgent {
        /// Keeps the directory of the socket alive.
        pub dir: tempfile::TempDir,
        /// The socket.
        pub socket: PathBuf,
        handle: JoinHandle<Vec<Seen>>,
    }

    impl FakeAgent {
        /// Waits for the agent to finish (it stops after its answers or after 10 s idle).
        pub fn seen(self) -> Vec<Seen> {
            let seen = self.handle.join().expect("fake agent panicked");
            drop(self.dir);
            seen
        }
    }

    /// Answers one connection per raw answer, in order.
    pub fn serve_raw(answers: Vec<Vec<u8>>) -> FakeAgent {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for answer in answers {
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut stream = loop {
                    match listener.accept() {
                        Ok((stream, _)) => break stream,
                        Err(_) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => return seen,
                    }
                };
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buf = Vec::new();
                let mut byte = [0u8; 1];
                while !buf.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return seen;
                    }
                    buf.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
                let request_line = lines.next().unwrap_or("").to_string();
                let headers: Vec<String> = lines.map(str::to_string).collect();
                let length = headers
                    .iter()
                    .find_map(|h| h.strip_prefix("Content-Length: "))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length];
                stream.read_exact(&mut body).expect("request body");
                let mut parts = request_line.split(' ');
                seen.push(Seen {
                    method: parts.next().unwrap_or("").to_string(),
                    path: parts.next().unwrap_or("").to_string(),
                    headers,
                    body,
                });
                // The client may stop reading (an answer too large): not the fake's failure.
                let _ = stream.write_all(&answer);
                // Keep the connection open a little: the client must not wait for the close.
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        FakeAgent {
            dir,
            socket,
            handle,
        }
    }

    /// Answers one connection per `(status, JSON body)`, in order, with a Content-Length body.
    pub fn serve(answers: Vec<(u16, serde_json::Value)>) -> FakeAgent {
        serve_raw(
            answers
                .into_iter()
                .map(|(status, body)| {
                    let body = body.to_string();
                    format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .into_bytes()
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{serve, serve_raw};
    use super::*;
    use serde_json::json;

    /// The raw answer as the client reads it from a fake agent.
    fn exchange_raw(answer: &[u8]) -> Result<HttpResponse, ClientError> {
        let agent = serve_raw(vec![answer.to_vec()]);
        let r = exchange(&agent.socket, "GET", "/v1/info", None);
        agent.seen();
        r
    }

    #[test]
    fn bodies_in_every_framing() {
        let r = exchange_raw(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n7;ext=1\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        assert_eq!(exchange_raw(raw).unwrap().body, b"hello, world0123456789");
        let r = exchange_raw(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        let r = exchange_raw(b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (404, 0));
    }

    #[test]
    fn bad_answers_are_one_line_errors() {
        let cases: &[&[u8]] = &[
            b"",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1",
        ];
        for raw in cases {
            let e = exchange_raw(raw).unwrap_err();
            let text = e.to_string();
            assert!(
                matches!(e, ClientError::Malformed(_)),
                "{:?}: {text}",
                String::from_utf8_lossy(raw)
            );
            assert!(!text.contains('\n'), "{text}");
        }
        let e = exchange_raw(b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed response from the agent: the connection was closed before the end of the answer"
        );
    }

    #[test]
    fn oversized_answers_are_refused() {
        let n = MAX_RESPONSE_BYTES + 1;
        let mut raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n").into_bytes();
        raw.resize(raw.len() + n, b'a');
        assert!(matches!(exchange_raw(&raw), Err(ClientError::TooLarge)));
        assert_eq!(
            ClientError::TooLarge.to_string(),
            "response from the agent is larger than 64 MiB"
        );
    }

    #[test]
    fn a_silent_agent_is_a_timeout() {
        // The fake agent reads the request and answers nothing until the client gave up.
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let e =
            call_within(&socket, "GET", "/v1/info", None, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "the shoal agent at {} did not answer within 0.2 s",
                socket.display()
            )
        );
        drop(listener);
    }

    #[test]
    fn bodies_decode_into_responses_whatever_the_status() {
        let ok = HttpResponse {
            status: 200,
            body: br#"{"result":"ok","message":"done"}"#.to_vec(),
        };
        assert_eq!(decode(ok).unwrap(), Response::ok("done"));
        let refused = HttpResponse {
            status: 404,
            body: br#"{"result":"error","message":"node x not found"}"#.to_vec(),
        };
        assert_eq!(
            decode(refused).unwrap(),
            Response::error("node x not found")
        );
        let plain = HttpResponse {
            status: 415,
            body: b"Expected request with `Content-Type: application/json`\n".to_vec(),
        };
        assert_eq!(
            decode(plain).unwrap_err().to_string(),
            "the agent answered HTTP 415: Expected request with `Content-Type: application/json`"
        );
        let empty = HttpResponse {
            status: 404,
            body: Vec::new(),
        };
        assert_eq!(
            decode(empty).unwrap_err().to_string(),
            "the agent answered HTTP 404: (no details)"
        );
        let garbage = HttpResponse {
            status: 200,
            body: b"<html>".to_vec(),
        };
        assert!(decode(garbage)
            .unwrap_err()
            .to_string()
            .starts_with("malformed response from the agent: HTTP 200: "));
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("node-1.a_b~"), "node-1.a_b~");
        assert_eq!(encode_segment("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        assert_eq!(encode_segment("été"), "%C3%A9t%C3%A9");
        assert_eq!(encode_segment(".."), "%2E%2E");
        assert_eq!(encode_segment("."), "%2E");
        assert_eq!(encode_segment("..."), "...");
        assert_eq!(encode_segment(""), "");
    }

    #[test]
    fn requests_are_checked() {
        assert!(build_request("GET", "/v1/nodes/a b", None).is_err());
        assert!(build_request("GET", "v1/info", None).is_err());
        assert!(build_request("GET\r\nX: y", "/v1/info", None).is_err());
        let read = build_request("GET", "/v1/nodes", None).unwrap();
        assert!(read
            .headers()
            .get(crate::control::REQUEST_ID_HEADER)
            .is_none());
        let rotate = build_request("GET", "/v1/swarm/join-token/worker?rotate=true", None).unwrap();
        assert!(rotate
            .headers()
            .get(crate::control::REQUEST_ID_HEADER)
            .is_some());
    }

    #[test]
    fn tcp_urls() {
        assert_eq!(
            parse_tcp_url("tcp://10.0.0.1:2377").unwrap(),
            ("10.0.0.1".to_string(), 2377)
        );
        assert_eq!(
            parse_tcp_url("tcp://[::1]:2377/").unwrap(),
            ("::1".to_string(), 2377)
        );
        assert_eq!(
            parse_tcp_url("tcp://mgr.example:9").unwrap(),
            ("mgr.example".to_string(), 9)
        );
        for bad in [
            "10.0.0.1:2377",
            "tcp://10.0.0.1",
            "tcp://:2377",
            "tcp://h:0",
            "tcp://h:99999",
            "tcp://[::1:2377",
            "tcp://a b:1",
        ] {
            assert!(parse_tcp_url(bad).is_err(), "{bad}");
        }
        // Several managers, in the order given.
        assert_eq!(
            parse_tcp_urls("tcp://10.0.0.1:2376, tcp://[::1]:2376,tcp://m3:1").unwrap(),
            vec![
                ("10.0.0.1".to_string(), 2376),
                ("::1".to_string(), 2376),
                ("m3".to_string(), 1)
            ]
        );
        assert_eq!(parse_tcp_urls("tcp://a:1").unwrap().len(), 1);
        for bad in ["tcp://a:1,", "tcp://a:1,b:2", ",tcp://a:1"] {
            assert!(parse_tcp_urls(bad).is_err(), "{bad}");
        }
        let many = vec!["tcp://a:1"; 17].join(",");
        assert!(parse_tcp_urls(&many).unwrap_err().contains("at most 16"));
    }

    #[test]
    fn calls_a_real_socket() {
        let (first, second) = (r#"{"result":"error"#, r#"","message":"node x not found"}"#);
        let answer = format!(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n\
             {:x}\r\n{first}\r\n{:X}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        let body = r#"{"result":"ok","message":"hi"}"#;
        let ok = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let agent = serve_raw(vec![answer.into_bytes(), ok.into_bytes()]);
        let r = call(&agent.socket, "GET", "/v1/nodes/x?stale=true", None).unwrap();
        assert_eq!(r, Response::error("node x not found"));
        let body = json!({"advertise_addr": null, "force_new_cluster": false});
        let r = call(&agent.socket, "POST", "/v1/swarm/init", Some(&body)).unwrap();
        assert_eq!(r, Response::ok("hi"));
        let seen = agent.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("GET", "/v1/nodes/x?stale=true")
        );
        assert!(seen[0].headers.contains(&"Host: shoal".to_string()));
        assert!(seen[0].headers.contains(&"Connection: close".to_string()));
        assert!(!seen[0]
            .headers
            .iter()
            .any(|h| h.starts_with("X-Shoal-Request-Id")));
        assert_eq!(seen[1].method, "POST");
        let rid = seen[1]
            .headers
            .iter()
            .find_map(|h| h.strip_prefix("X-Shoal-Request-Id: "))
            .expect("a write carries a request id");
        assert!(rid.parse::<shoal_cluster::RequestId>().is_ok(), "{rid}");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&seen[1].body).unwrap(),
            body
        );
    }

    #[test]
    fn json_answers_from_the_fake_agent() {
        let agent = serve(vec![(200, json!({"result": "ok", "message": ""}))]);
        let r = call(&agent.socket, "POST", "/v1/swarm/leave", None).unwrap();
        assert_eq!(r, Response::ok(""));
        assert_eq!(agent.seen().len(), 1);
    }

    #[test]
    fn connecting_to_nothing_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("shoal.sock");
        let e = call(&socket, "GET", "/v1/info", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cannot connect to the shoal agent at {}: No such file or directory (is `shoal agent` running?)",
                socket.display()
            )
        );
    }

    #[test]
    fn works_from_inside_a_runtime() {
        let agent = serve(vec![(200, json!({"result": "ok", "message": "in"}))]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(async { call(&agent.socket, "GET", "/v1/info", None) });
        assert_eq!(r.unwrap(), Response::ok("in"));
        agent.seen();
    }
}
