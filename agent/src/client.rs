//! The CLI's side of the control API: a small blocking HTTP/1.1 client over the agent's Unix
//! socket.
//!
//! One request per connection (`Connection: close`). The answer is read in full (at most
//! [`MAX_RESPONSE_BYTES`]), framed by `Content-Length`, `Transfer-Encoding: chunked` or the end
//! of the connection, and its JSON body is decoded into a [`Response`] whatever the status: the
//! agent reports refusals as [`Response::Error`] with a 4xx/5xx status.
//!
//! Everything read from the socket is treated as untrusted: sizes are bounded, the framing is
//! checked, and every problem becomes a one-line [`ClientError`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::api::Response;

/// Largest answer accepted: status line, headers and body together.
pub const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Largest status line plus headers accepted.
const MAX_HEAD_BYTES: usize = 64 << 10;

/// Longest chunk-size or trailer line accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;

/// How long one read or write on the socket may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call to the agent failed (before any answer of the agent could be decoded).
#[derive(Debug, Error)]
pub enum ClientError {
    /// The socket could not be opened.
    #[error(
        "cannot connect to the shoal agent at {}: {} ({})",
        .path.display(),
        os_message(.source),
        connect_hint(.source)
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What `connect` said.
        source: io::Error,
    },
    /// Sending the request or receiving the answer failed halfway.
    #[error("lost the connection to the shoal agent at {}: {}", .path.display(), os_message(.source))]
    Io {
        /// The socket.
        path: PathBuf,
        /// What the read or write said.
        source: io::Error,
    },
    /// The agent did not answer in time.
    #[error(
        "the shoal agent at {} did not answer within {} s",
        .path.display(),
        .after.as_secs_f64()
    )]
    Timeout {
        /// The socket.
        path: PathBuf,
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

/// What to suggest when the socket cannot be opened.
fn connect_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => "do you have permission to use it?",
        _ => "is `shoal agent` running?",
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

/// Sends one request to the agent listening on `socket` and returns its answer.
///
/// `path` is the route with its query string (`/v1/nodes?stale=true`); its segments must already
/// be encoded with [`encode_segment`]. `body`, if any, is sent as JSON.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Response, ClientError> {
    decode(exchange(socket, method, path, body)?)
}

/// Sends one request to the agent listening on `socket` and returns the raw answer (status and
/// body), for routes that do not answer JSON (`GET /metrics`).
pub fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<HttpResponse, ClientError> {
    exchange_within(socket, method, path, body, IO_TIMEOUT)
}

/// [`call`] with `timeout` for each read and write instead of [`IO_TIMEOUT`] (test clients
/// that must tell an unknown outcome from a slow one).
pub fn call_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    decode(exchange_within(socket, method, path, body, timeout)?)
}

/// [`exchange`] with `timeout` for each read and write instead of [`IO_TIMEOUT`].
pub fn exchange_within(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<HttpResponse, ClientError> {
    let request = build_request(method, path, body)?;
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ClientError::Timeout {
            path: socket.to_path_buf(),
            after: timeout,
        },
        _ => ClientError::Io {
            path: socket.to_path_buf(),
            source,
        },
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_error)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_error)?;
    // No half-close after the request: some servers take a read EOF as the client going away.
    stream.write_all(&request).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    read_response(&mut stream).map_err(|e| match e {
        ReadError::Io(source) => io_error(source),
        ReadError::Parse(e) => e,
    })
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

/// The bytes of one request.
fn build_request(
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<Vec<u8>, ClientError> {
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
    // Writes carry a request id (one per CLI process: it makes one write), so that the
    // agents' retries of the same request are applied once.
    let writes = method != "GET" || path.contains("rotate=true");
    let rid = if writes {
        format!("X-Shoal-Request-Id: {}\r\n", request_id())
    } else {
        String::new()
    };
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\n\
         Host: shoal\r\n\
         Connection: close\r\n\
         Accept: application/json\r\n\
         Content-Type: application/json\r\n\
         {rid}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    Ok(request)
}

/// A parsed HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Why parsing failed.
#[derive(Debug, PartialEq, Eq)]
enum ParseError {
    /// Over [`MAX_RESPONSE_BYTES`].
    TooLarge,
    /// Anything else.
    Malformed(String),
}

impl From<ParseError> for ClientError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::TooLarge => ClientError::TooLarge,
            ParseError::Malformed(why) => ClientError::Malformed(why),
        }
    }
}

fn malformed<T>(why: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError::Malformed(why.into()))
}

/// Parses a complete HTTP/1.x answer (everything the server sent before closing).
pub fn parse_response(bytes: &[u8]) -> Result<HttpResponse, ClientError> {
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(ClientError::TooLarge);
    }
    let Some(head) = parse_head(bytes)? else {
        return Err(truncated(bytes.is_empty()).into());
    };
    match parse_body(head.framing, &bytes[head.len..], true)? {
        Some(body) => Ok(HttpResponse {
            status: head.status,
            body,
        }),
        None => Err(truncated(false).into()),
    }
}

fn truncated(nothing: bool) -> ParseError {
    ParseError::Malformed(if nothing {
        "the connection was closed without an answer".into()
    } else {
        "the connection was closed before the end of the answer".into()
    })
}

/// How the body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// `Content-Length`.
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs until the connection closes.
    UntilClose,
}

/// The final status line and headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Head {
    /// Status code (not 1xx).
    status: u16,
    /// Bytes from the start of the input to the start of the body (interim 1xx answers included).
    len: usize,
    /// How the body is delimited.
    framing: Framing,
}

/// Parses the status line and headers, skipping interim (1xx) answers; `None` while incomplete.
fn parse_head(bytes: &[u8]) -> Result<Option<Head>, ParseError> {
    let mut start = 0;
    loop {
        let rest = &bytes[start..];
        // Reject garbage early rather than waiting for a blank line that never comes.
        let prefix = rest.len().min(5);
        if rest[..prefix] != b"HTTP/"[..prefix] {
            return malformed(format!("not an HTTP answer: {}", snippet(rest, 40)));
        }
        let search = &rest[..rest.len().min(MAX_HEAD_BYTES)];
        let Some(end) = find(search, b"\r\n\r\n") else {
            if rest.len() >= MAX_HEAD_BYTES {
                return malformed(format!("headers longer than {} KiB", MAX_HEAD_BYTES >> 10));
            }
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&rest[..end]);
        let mut lines = text.split("\r\n");
        let status = parse_status_line(lines.next().unwrap_or(""))?;
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return malformed(format!("bad header line {}", snippet(line.as_bytes(), 60)));
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let n = parse_content_length(value)?;
                if content_length.is_some_and(|m| m != n) {
                    return malformed("conflicting Content-Length headers");
                }
                content_length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                for coding in value.split(',').map(str::trim) {
                    if coding.eq_ignore_ascii_case("chunked") && !chunked {
                        chunked = true;
                    } else if !coding.eq_ignore_ascii_case("identity") || chunked {
                        return malformed(format!(
                            "unsupported Transfer-Encoding {}",
                            snippet(value.as_bytes(), 60)
                        ));
                    }
                }
            }
        }
        let len = start + end + 4;
        if (100..200).contains(&status) {
            if status == 101 {
                return malformed("unexpected protocol switch (HTTP 101)");
            }
            start = len;
            continue;
        }
        let framing = if chunked {
            Framing::Chunked
        } else if status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            match content_length {
                Some(n) if n > MAX_RESPONSE_BYTES => return Err(ParseError::TooLarge),
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        return Ok(Some(Head {
            status,
            len,
            framing,
        }));
    }
}

/// `HTTP/1.1 200 OK` → 200.
fn parse_status_line(line: &str) -> Result<u16, ParseError> {
    let bad = || malformed(format!("bad status line {}", snippet(line.as_bytes(), 60)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || version.len() != 8 {
        return bad();
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return bad();
    }
    match code.parse::<u16>() {
        Ok(status) if (100..600).contains(&status) => Ok(status),
        _ => bad(),
    }
}

fn parse_content_length(value: &str) -> Result<usize, ParseError> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return malformed(format!(
            "bad Content-Length {}",
            snippet(value.as_bytes(), 30)
        ));
    }
    match value.parse::<u64>() {
        Ok(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        Err(_) => malformed("bad Content-Length"),
    }
}

/// The body from the bytes after the head; `None` while incomplete (`eof`: no more will come).
fn parse_body(framing: Framing, data: &[u8], eof: bool) -> Result<Option<Vec<u8>>, ParseError> {
    match framing {
        Framing::Length(n) if data.len() >= n => Ok(Some(data[..n].to_vec())),
        Framing::Length(_) => Ok(None),
        Framing::UntilClose if eof => Ok(Some(data.to_vec())),
        Framing::UntilClose => Ok(None),
        Framing::Chunked => parse_chunked(data),
    }
}

/// De-chunks a chunked body; `None` while incomplete.
fn parse_chunked(data: &[u8]) -> Result<Option<Vec<u8>>, ParseError> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(line) = chunk_line(&data[pos..])? else {
            return Ok(None);
        };
        let size_field = line.split(|&b| b == b';').next().unwrap_or(b"");
        let size_field = size_field.trim_ascii();
        if size_field.is_empty()
            || size_field.len() > 16
            || !size_field.iter().all(u8::is_ascii_hexdigit)
        {
            return malformed(format!("bad chunk size {}", snippet(line, 30)));
        }
        let size = size_field.iter().fold(0u64, |acc, &b| {
            let digit = char::from(b).to_digit(16).unwrap_or(0);
            acc.saturating_mul(16).saturating_add(u64::from(digit))
        });
        pos += line.len() + 2;
        if size == 0 {
            // Trailers (ignored), then the final empty line.
            loop {
                let Some(trailer) = chunk_line(&data[pos..])? else {
                    return Ok(None);
                };
                pos += trailer.len() + 2;
                if trailer.is_empty() {
                    return Ok(Some(body));
                }
            }
        }
        let size = match usize::try_from(size) {
            Ok(size) if size <= MAX_RESPONSE_BYTES - body.len() => size,
            _ => return Err(ParseError::TooLarge),
        };
        if data.len() - pos < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[pos..pos + size]);
        pos += size;
        if &data[pos..pos + 2] != b"\r\n" {
            return malformed("chunk not followed by CRLF");
        }
        pos += 2;
    }
}

/// The line at the start of `data` (without its CRLF); `None` while incomplete.
fn chunk_line(data: &[u8]) -> Result<Option<&[u8]>, ParseError> {
    let search = &data[..data.len().min(MAX_CHUNK_LINE + 2)];
    match find(search, b"\r\n") {
        Some(end) => Ok(Some(&data[..end])),
        None if data.len() > MAX_CHUNK_LINE => malformed("chunk header line too long"),
        None => Ok(None),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Up to `max` characters of untrusted bytes, quoted, on one line.
fn snippet(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut short: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        short.push('…');
    }
    format!("{short:?}")
}

/// Why reading failed.
enum ReadError {
    /// The socket failed.
    Io(io::Error),
    /// What was read is not a valid answer.
    Parse(ClientError),
}

impl From<ParseError> for ReadError {
    fn from(e: ParseError) -> Self {
        ReadError::Parse(e.into())
    }
}

/// Reads one answer: until its body is complete or the connection closes, whichever is first.
fn read_response(reader: &mut impl Read) -> Result<HttpResponse, ReadError> {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut head: Option<Head> = None;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return parse_response(&buf).map_err(ReadError::Parse),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(ParseError::TooLarge.into());
        }
        if head.is_none() {
            head = parse_head(&buf)?;
        }
        let Some(h) = head else { continue };
        let data = &buf[h.len..];
        // Try to finish only when the body may be complete, so that reading stays linear.
        let worth_trying = match h.framing {
            Framing::Length(n) => data.len() >= n,
            Framing::Chunked => data.ends_with(b"\r\n\r\n"),
            Framing::UntilClose => false,
        };
        if worth_trying {
            if let Some(body) = parse_body(h.framing, data, false)? {
                return Ok(HttpResponse {
                    status: h.status,
                    body,
                });
            }
        }
    }
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
                stream.write_all(&answer).expect("answer");
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

    #[test]
    fn content_length_bodies() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!((r.status, r.body.len()), (404, 0));
    }

    #[test]
    fn chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\nhello\r\n7;ext=1\r\n, world\r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.body, b"hello, world0123456789");
        // Transfer-Encoding wins over Content-Length.
        let raw = b"HTTP/1.1 500 E\r\nContent-Length: 3\r\ntransfer-encoding: Chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw).unwrap().body, b"ab");
    }

    #[test]
    fn body_until_close_and_interim_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":1}").unwrap();
        assert_eq!(r.body, b"{\"a\":1}");
        let r = parse_response(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"ok"[..]));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "closed without an answer"),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP answer"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
            (b"HTTP/2 200 OK\r\n\r\n", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "before the end",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "conflicting",
            ),
            (
                b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
                "bad header line",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n",
                "not followed by CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                "before the end",
            ),
            (b"HTTP/1.1 101 Switching\r\n\r\n", "protocol switch"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 1", "before the end"),
        ];
        for (raw, expected) in cases {
            let e = parse_response(raw).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("malformed response from the agent: ") && text.contains(expected),
                "{:?}: {text}",
                String::from_utf8_lossy(raw)
            );
            assert!(!text.contains('\n'));
        }
    }

    #[test]
    fn oversized_answers_are_refused() {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_RESPONSE_BYTES + 1
        );
        assert!(matches!(
            parse_response(raw.as_bytes()),
            Err(ClientError::TooLarge)
        ));
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFF\r\n";
        assert!(matches!(parse_response(raw), Err(ClientError::TooLarge)));
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.resize(MAX_HEAD_BYTES + 10, b'a');
        assert!(parse_response(&huge)
            .unwrap_err()
            .to_string()
            .contains("headers longer than 64 KiB"));
        assert_eq!(
            ClientError::TooLarge.to_string(),
            "response from the agent is larger than 64 MiB"
        );
    }

    #[test]
    fn reading_stops_at_the_end_of_the_body_or_fails_on_truncation() {
        // A reader that yields one byte at a time exercises the incremental parse.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.split_first() {
                    Some((&b, rest)) if !buf.is_empty() => {
                        buf[0] = b;
                        self.0 = rest;
                        Ok(1)
                    }
                    _ => Ok(0),
                }
            }
        }
        let raw =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGARBAGE";
        let r = read_response(&mut Trickle(raw)).ok().unwrap();
        assert_eq!(r.body, b"abc");
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiGARBAGE";
        assert_eq!(read_response(&mut Trickle(raw)).ok().unwrap().body, b"hi");
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nhi";
        assert!(matches!(
            read_response(&mut Trickle(raw)),
            Err(ReadError::Parse(ClientError::Malformed(_)))
        ));
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
    fn requests_are_checked_and_well_formed() {
        let body = json!({"token": "T", "remote_addr": "10.0.0.1:4242"});
        let raw = build_request("POST", "/v1/swarm/join", Some(&body)).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, sent) = text.split_once("\r\n\r\n").unwrap();
        let (head, rest) = head.split_once("X-Shoal-Request-Id: ").unwrap();
        let (rid, length) = rest.split_once("\r\n").unwrap();
        assert!(rid.parse::<shoal_cluster::RequestId>().is_ok(), "{rid}");
        assert_eq!(
            format!("{head}{length}"),
            format!(
                "POST /v1/swarm/join HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\
                 Accept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}",
                sent.len()
            )
        );
        // Each write has its own id; reads carry none.
        let again =
            String::from_utf8(build_request("POST", "/v1/swarm/join", Some(&body)).unwrap())
                .unwrap();
        assert!(!again.contains(rid));
        let read = String::from_utf8(build_request("GET", "/v1/nodes", None).unwrap()).unwrap();
        assert!(!read.contains("X-Shoal-Request-Id"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(sent).unwrap(),
            body
        );
        assert!(build_request("GET", "/v1/nodes/a b", None).is_err());
        assert!(build_request("GET", "v1/info", None).is_err());
        assert!(build_request("GET\r\nX: y", "/v1/info", None).is_err());
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
        assert!(seen[0].headers.contains(&"Content-Length: 0".to_string()));
        assert_eq!(seen[1].method, "POST");
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
        // A socket whose listener closes without answering.
        let closed = serve_raw(vec![Vec::new()]);
        let e = call(&closed.socket, "GET", "/v1/info", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "malformed response from the agent: the connection was closed without an answer"
        );
        closed.seen();
    }
}
