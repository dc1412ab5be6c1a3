//! Health checks of running tasks: the agent's own probes (HTTP, TCP, and a process task's
//! shell command) and the engine's view of a container's check, followed until the task turns
//! unhealthy. Docker's timing: a check every interval, the first one an interval after the
//! start; `retries` failures in a row make the task unhealthy, except within the start period
//! (a check that passes then makes it healthy at once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_cluster::Health;
use shoal_executor::{Executor, HealthConfig, HealthProbe, HealthState, ProbeOutcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often the engine's view of a container's health is read while it is not healthy.
const ENGINE_POLL: Duration = Duration::from_millis(500);
/// The longest wait between two reads of the engine's view once healthy.
const ENGINE_POLL_MAX: Duration = Duration::from_secs(5);
/// The most of an HTTP answer read (its status line is all that counts).
const MAX_HTTP_HEAD: usize = 1024;

/// Who checks a task's health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checker {
    /// Nobody: the task has no check.
    None,
    /// The runtime (a container's check, run by the engine): its view is followed.
    Runtime(Option<HealthConfig>),
    /// The agent, with this check.
    Agent(HealthConfig),
}

impl Checker {
    /// Who checks a task with health check `h` on `exec`; `checked`: the runtime said at start
    /// that it checks the task itself (a container image's own check).
    pub fn of(h: Option<&HealthConfig>, exec: &dyn Executor, checked: bool) -> Checker {
        match h {
            None if checked => Checker::Runtime(None),
            None => Checker::None,
            Some(h) => match &h.probe {
                HealthProbe::Disabled => Checker::None,
                HealthProbe::Shell(_) if exec.runs_shell_checks() => {
                    Checker::Runtime(Some(h.clone()))
                }
                _ => Checker::Agent(h.clone()),
            },
        }
    }

    /// Whether the task's health is checked at all.
    pub fn checks(&self) -> bool {
        !matches!(self, Checker::None)
    }

    /// The health a task has when it starts running.
    pub fn initial(&self) -> Health {
        match self {
            Checker::None => Health::None,
            _ => Health::Starting,
        }
    }
}

fn health_of(s: HealthState) -> Health {
    match s {
        HealthState::Starting => Health::Starting,
        HealthState::Healthy => Health::Healthy,
        HealthState::Unhealthy => Health::Unhealthy,
    }
}

/// Follows a running task's health, calling `changed` on every change, until it is unhealthy:
/// returns the last check's output then. Never returns for a task nobody checks.
pub async fn follow(
    checker: Checker,
    exec: Arc<dyn Executor>,
    task_id: String,
    mut changed: impl FnMut(Health),
) -> String {
    let mut last = checker.initial();
    match checker {
        Checker::None => std::future::pending().await,
        Checker::Runtime(cfg) => {
            let healthy_poll = cfg
                .as_ref()
                .map_or(ENGINE_POLL_MAX, |c| c.interval)
                .clamp(ENGINE_POLL, ENGINE_POLL_MAX);
            loop {
                let wait = if last == Health::Healthy {
                    healthy_poll
                } else {
                    ENGINE_POLL
                };
                tokio::time::sleep(wait).await;
                match exec.health(&task_id).await {
                    Ok(Some((state, output))) => {
                        let h = health_of(state);
                        if h != last {
                            last = h;
                            changed(h);
                        }
                        if h == Health::Unhealthy {
                            return output;
                        }
                    }
                    // No check after all: nothing to follow.
                    Ok(None) => std::future::pending().await,
                    // The task is going away; its end is seen elsewhere.
                    Err(_) => {}
                }
            }
        }
        Checker::Agent(cfg) => {
            let started = Instant::now();
            let mut failures = 0u32;
            loop {
                tokio::time::sleep(cfg.interval).await;
                let outcome = check(&cfg, exec.as_ref(), &task_id).await;
                if outcome.ok {
                    failures = 0;
                    if last != Health::Healthy {
                        last = Health::Healthy;
                        changed(last);
                    }
                    continue;
                }
                if started.elapsed() < cfg.start_period {
                    continue;
                }
                failures += 1;
                if failures >= cfg.retries {
                    changed(Health::Unhealthy);
                    return outcome.output;
                }
            }
        }
    }
}

/// One check the agent runs.
pub async fn check(cfg: &HealthConfig, exec: &dyn Executor, task_id: &str) -> ProbeOutcome {
    let failed = |output: String| ProbeOutcome { ok: false, output };
    match &cfg.probe {
        HealthProbe::Shell(cmd) => exec
            .probe(task_id, cmd, cfg.timeout)
            .await
            .unwrap_or_else(|e| failed(e.to_string())),
        HealthProbe::Http(url) => match tokio::time::timeout(cfg.timeout, http_get(url)).await {
            Ok(Ok(code)) if (200..400).contains(&code) => ProbeOutcome {
                ok: true,
                output: format!("HTTP {code}"),
            },
            Ok(Ok(code)) => failed(format!("GET {url}: HTTP {code}")),
            Ok(Err(e)) => failed(format!("GET {url}: {e}")),
            Err(_) => failed(format!(
                "GET {url}: no answer within {} ms",
                cfg.timeout.as_millis()
            )),
        },
        HealthProbe::Tcp(port) => {
            let connect = tokio::net::TcpStream::connect(("127.0.0.1", *port));
            match tokio::time::timeout(cfg.timeout, connect).await {
                Ok(Ok(_)) => ProbeOutcome {
                    ok: true,
                    output: format!("connected to port {port}"),
                },
                Ok(Err(e)) => failed(format!("connect to port {port}: {e}")),
                Err(_) => failed(format!(
                    "connect to port {port}: no answer within {} ms",
                    cfg.timeout.as_millis()
                )),
            }
        }
        HealthProbe::Disabled => ProbeOutcome {
            ok: true,
            output: String::new(),
        },
    }
}

/// `http://HOST[:PORT][/PATH]` → (host, port, path).
pub fn split_url(url: &str) -> Result<(String, u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are checked")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?}"))?,
        ),
        _ => (authority, 80),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    Ok((host.to_string(), port, path.to_string()))
}

/// A GET of the URL over HTTP/1.0: the answer's status code.
async fn http_get(url: &str) -> Result<u16, String> {
    let (host, port, path) = split_url(url)?;
    let mut s = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: shoal-health\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < MAX_HTTP_HEAD {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|c| c.parse::<u16>().ok()),
    ) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => Ok(code),
        _ => Err(format!(
            "not an HTTP answer: {:?}",
            &line[..line.len().min(64)]
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_port_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/health").unwrap(),
            ("127.0.0.1".into(), 8080, "/health".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost".into(), 80, "/".into())
        );
        assert_eq!(
            split_url("http://[::1]:81/x?y=1").unwrap(),
            ("::1".into(), 81, "/x?y=1".into())
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http://:80/").is_err());
        assert!(split_url("http://h:99999/").is_err());
    }

    #[tokio::test]
    async fn http_and_tcp_checks_pass_and_fail_as_the_server_answers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut n = 0;
            loop {
                let (mut c, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 512];
                let _ = c.read(&mut buf).await;
                n += 1;
                let code = if n == 1 { 200 } else { 503 };
                let _ = c
                    .write_all(format!("HTTP/1.1 {code} X\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let exec = crate::sim_executor::SimExecutor::new();
        let cfg = |probe| HealthConfig {
            probe,
            interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
            retries: 1,
            start_period: Duration::ZERO,
        };
        let http = cfg(HealthProbe::Http(format!("http://127.0.0.1:{port}/")));
        assert!(check(&http, &exec, "t").await.ok);
        let second = check(&http, &exec, "t").await;
        assert!(!second.ok);
        assert!(second.output.contains("HTTP 503"), "{}", second.output);
        assert!(check(&cfg(HealthProbe::Tcp(port)), &exec, "t").await.ok);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        assert!(!check(&cfg(HealthProbe::Tcp(closed)), &exec, "t").await.ok);
    }
}
