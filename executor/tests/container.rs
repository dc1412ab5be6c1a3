//! The container runtime against the real Docker Engine. Each test has its own random node id
//! (tests run in parallel and may share the engine with other agents) and removes its
//! containers at the end, even when it fails. Without an engine the tests are skipped (see
//! `shoal_executor::test_image::engine_for_tests`; `SHOAL_REQUIRE_DOCKER=1` makes that fatal).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use shoal_executor::test_image::{engine_for_tests, DEFAULT_TAG};
use shoal_executor::{
    AdoptedState, ContainerExecutor, ExecError, Executor, ExitStatus, HostPort, Limits, LogOptions,
    Mount, MountKind, Stream, TaskRun,
};

/// A random node id, so that parallel tests never see each other's containers.
fn random_node() -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("test{:016x}", h.finish())
}

/// Removes every container of a node when dropped (also after a failed assertion).
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let node = self.0.clone();
        // A thread of its own: a runtime cannot be started inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let Ok(exec) = ContainerExecutor::connect(None, &node).await else {
                    return;
                };
                if let Ok(tasks) = exec.adopt().await {
                    for t in tasks {
                        let _ = exec.remove(&t.run.task_id).await;
                    }
                }
            });
        })
        .join();
    }
}

/// An executor with a fresh node id and its cleanup, or `None` to skip.
async fn setup() -> Option<(ContainerExecutor, Cleanup)> {
    let node = random_node();
    let exec = engine_for_tests(&node).await?;
    Some((exec, Cleanup(node)))
}

fn task(id: &str, args: &[&str]) -> TaskRun {
    TaskRun {
        task_id: id.to_string(),
        service_name: "svc".to_string(),
        slot: 1,
        program: DEFAULT_TAG.to_string(),
        args: args.iter().map(|s| s.to_string()).collect(),
        cluster_id: "testcluster".to_string(),
        stop_grace: Duration::from_secs(10),
        ..TaskRun::default()
    }
}

async fn run_to_end(exec: &ContainerExecutor, run: &TaskRun) -> ExitStatus {
    exec.prepare(run).await.expect("prepare");
    exec.start(&run.task_id).await.expect("start");
    exec.wait(&run.task_id).await.expect("wait")
}

async fn all_logs(exec: &ContainerExecutor, task_id: &str) -> Vec<shoal_executor::LogLine> {
    let mut rx = exec
        .logs(task_id, LogOptions::default())
        .await
        .expect("logs");
    let mut lines = Vec::new();
    while let Some(l) = rx.recv().await {
        lines.push(l);
    }
    lines
}

fn engine() -> bollard::Docker {
    bollard::Docker::connect_with_local_defaults().expect("engine client")
}

#[tokio::test]
async fn exit_code_and_logs() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    assert_eq!(exec.runtime(), "container");
    assert!(!exec.engine_version().is_empty());
    assert_eq!(exec.ping().await.expect("ping"), exec.engine_version());
    let run = task(
        "00000000000000a1",
        &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
    );
    assert_eq!(run_to_end(&exec, &run).await, ExitStatus::Code(3));
    // wait again: the container has exited already.
    assert_eq!(
        exec.wait(&run.task_id).await.expect("wait"),
        ExitStatus::Code(3)
    );
    assert_eq!(exec.exit_error(&run.task_id).await, None);
    let lines = all_logs(&exec, &run.task_id).await;
    let hi = lines.iter().find(|l| l.text == "hi").expect("the line hi");
    assert_eq!(hi.stream, Stream::Stdout);
    // A real timestamp (after 2020), not a placeholder.
    assert!(hi.timestamp_ms > 1_577_836_800_000, "{hi:?}");
    let oops = lines
        .iter()
        .find(|l| l.text == "oops")
        .expect("the line oops");
    assert_eq!(oops.stream, Stream::Stderr);
    let tail = exec
        .logs(
            &run.task_id,
            LogOptions {
                tail: Some(1),
                follow: false,
            },
        )
        .await
        .expect("logs");
    let mut tail = tail;
    let mut n = 0;
    while tail.recv().await.is_some() {
        n += 1;
    }
    assert_eq!(n, 1);
    // prepare again is a no-op on the existing container; remove is idempotent.
    exec.prepare(&run).await.expect("prepare again");
    exec.remove(&run.task_id).await.expect("remove");
    exec.remove(&run.task_id).await.expect("remove again");
    assert!(matches!(
        exec.wait(&run.task_id).await,
        Err(ExecError::NotFound(_))
    ));
    exec.shutdown(&run.task_id, Duration::from_secs(1))
        .await
        .expect("shutdown of a gone task");
}

#[tokio::test]
async fn missing_image_bad_mount_and_bad_command_are_invalid() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let mut run = task("00000000000000b1", &[]);
    run.program = "shoal-test/no-such-image:404".to_string();
    match exec.prepare(&run).await {
        Err(ExecError::Invalid(m)) => {
            assert_eq!(m, "No such image: shoal-test/no-such-image:404")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }

    let mut run = task("00000000000000b2", &["true"]);
    run.mounts = vec![Mount {
        kind: MountKind::Bind,
        source: "/nonexistent/shoal/source".to_string(),
        target: "/data".to_string(),
        read_only: false,
    }];
    match exec.prepare(&run).await {
        Err(ExecError::Invalid(m)) => assert!(m.contains("/nonexistent/shoal/source"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }

    let run = task("00000000000000b3", &["/no/such/program"]);
    exec.prepare(&run).await.expect("prepare");
    match exec.start(&run.task_id).await {
        Err(ExecError::Invalid(m)) => assert!(m.contains("no such file"), "{m}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    // The engine's error stays with the container: exit_error, wait and adopt tell it.
    let said = exec
        .exit_error(&run.task_id)
        .await
        .expect("an engine error");
    assert!(said.contains("no such file"), "{said}");
    match exec.wait(&run.task_id).await {
        Err(ExecError::Runtime(m)) => assert!(m.contains("no such file"), "{m}"),
        other => panic!("expected Runtime, got {other:?}"),
    }
    let adopted = exec.adopt().await.expect("adopt");
    let t = adopted
        .iter()
        .find(|t| t.run.task_id == run.task_id)
        .expect("adopted");
    assert!(matches!(&t.state, AdoptedState::Failed(_)), "{t:?}");
}

#[tokio::test]
async fn limits_and_labels_reach_the_engine() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let mut run = task("00000000000000c1", &["sleep", "1000"]);
    run.limits = Limits {
        nano_cpus: Some(500_000_000),
        memory_bytes: Some(64 << 20),
        pids: Some(100),
    };
    run.labels.insert("team".to_string(), "blue".to_string());
    exec.prepare(&run).await.expect("prepare");
    let details = exec.start(&run.task_id).await.expect("start");
    let id = details.container_id.clone().expect("container id");
    assert!(details.pid.is_some());
    let info = engine()
        .inspect_container(&id, None)
        .await
        .expect("inspect");
    let host = info.host_config.clone().unwrap_or_default();
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.pids_limit, Some(100));
    let labels = info
        .config
        .clone()
        .unwrap_or_default()
        .labels
        .unwrap_or_default();
    let label = |k: &str| labels.get(k).map(String::as_str);
    assert_eq!(label("com.shoal.cluster"), Some("testcluster"));
    assert_eq!(label("com.shoal.node"), Some(exec.node_id().as_str()));
    assert_eq!(label("com.shoal.service"), Some("svc"));
    assert_eq!(label("com.shoal.task"), Some("00000000000000c1"));
    assert_eq!(label("com.shoal.slot"), Some("1"));
    assert_eq!(label("team"), Some("blue"));
    assert_eq!(
        info.name.as_deref(),
        Some(format!("/svc.1.00000000000000c1.{}", exec.node_id()).as_str())
    );
    // start again: the same container, still running.
    let again = exec.start(&run.task_id).await.expect("start again");
    assert_eq!(again.container_id, details.container_id);
    exec.shutdown(&run.task_id, Duration::from_secs(1))
        .await
        .expect("shutdown");
    exec.remove(&run.task_id).await.expect("remove");
    assert!(engine().inspect_container(&id, None).await.is_err());
}

#[tokio::test]
async fn env_workdir_user_bind_mount_and_read_only_root() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(dir.path().join("f"), "from the host\n").expect("write");
    std::fs::set_permissions(dir.path().join("f"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");

    let mut run = task(
        "00000000000000d1",
        &["sh", "-c", "echo \"$FOO\"; pwd; id -u; cat /data/f"],
    );
    run.env = vec![("FOO".to_string(), "bar baz".to_string())];
    run.workdir = Some("/tmp".into());
    run.user = Some("1234:1234".to_string());
    run.mounts = vec![Mount {
        kind: MountKind::Bind,
        source: dir.path().display().to_string(),
        target: "/data".to_string(),
        read_only: true,
    }];
    assert_eq!(run_to_end(&exec, &run).await, ExitStatus::Code(0));
    let text: Vec<String> = all_logs(&exec, &run.task_id)
        .await
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert_eq!(text, vec!["bar baz", "/tmp", "1234", "from the host"]);

    // As root, writing to / fails only with a read-only root filesystem.
    let mut ro = task("00000000000000d2", &["touch", "/written"]);
    ro.read_only = true;
    assert_ne!(run_to_end(&exec, &ro).await, ExitStatus::Code(0));
    let rw = task("00000000000000d3", &["touch", "/written"]);
    assert_eq!(run_to_end(&exec, &rw).await, ExitStatus::Code(0));
}

#[tokio::test]
async fn shutdown_with_grace_and_kill() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    // Leaves on SIGTERM: ends within the grace with its own code.
    let polite = task(
        "00000000000000e1",
        &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait"],
    );
    exec.prepare(&polite).await.expect("prepare");
    exec.start(&polite.task_id).await.expect("start");
    exec.shutdown(&polite.task_id, Duration::from_secs(60))
        .await
        .expect("shutdown");
    assert_eq!(
        exec.wait(&polite.task_id).await.expect("wait"),
        ExitStatus::Code(0)
    );

    // Ignores SIGTERM: killed once the grace is over.
    let stubborn = task(
        "00000000000000e2",
        &["sh", "-c", "trap '' TERM; sleep 1000"],
    );
    exec.prepare(&stubborn).await.expect("prepare");
    exec.start(&stubborn.task_id).await.expect("start");
    let waiter = {
        let id = stubborn.task_id.clone();
        let exec = &exec;
        async move { exec.wait(&id).await }
    };
    let (stopped, waited) = tokio::join!(
        exec.shutdown(&stubborn.task_id, Duration::from_millis(500)),
        waiter
    );
    stopped.expect("shutdown");
    assert_eq!(waited.expect("wait"), ExitStatus::Signal(9));
    // Stopping a stopped container is fine.
    exec.shutdown(&stubborn.task_id, Duration::from_secs(1))
        .await
        .expect("shutdown again");
}

#[tokio::test]
async fn adopt_only_own_containers() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let running = task("00000000000000f1", &["sleep", "1000"]);
    exec.prepare(&running).await.expect("prepare");
    let details = exec.start(&running.task_id).await.expect("start");
    let mut exited = task("00000000000000f2", &["sh", "-c", "exit 5"]);
    exited.slot = 0;
    exited.service_name = "global".to_string();
    assert_eq!(run_to_end(&exec, &exited).await, ExitStatus::Code(5));
    let mut prepared = task("00000000000000f3", &["true"]);
    prepared.env = vec![("A".to_string(), "1".to_string())];
    exec.prepare(&prepared).await.expect("prepare");

    // Another node sharing the engine sees none of them and touches none of them.
    let other = ContainerExecutor::connect(None, &format!("{}x", exec.node_id()))
        .await
        .expect("connect");
    let _other_cleanup = Cleanup(other.node_id().to_string());
    assert!(other.adopt().await.expect("adopt").is_empty());
    other
        .shutdown(&running.task_id, Duration::from_secs(1))
        .await
        .expect("shutdown of an unknown task");
    other
        .remove(&running.task_id)
        .await
        .expect("remove of an unknown task");
    assert!(matches!(
        other.wait(&running.task_id).await,
        Err(ExecError::NotFound(_))
    ));

    // A new executor of the same node (an agent restart) finds all three.
    let again = ContainerExecutor::connect(Some(exec.host()), &exec.node_id())
        .await
        .expect("connect");
    let adopted = again.adopt().await.expect("adopt");
    assert_eq!(adopted.len(), 3, "{adopted:?}");
    let find = |id: &str| {
        adopted
            .iter()
            .find(|t| t.run.task_id == id)
            .unwrap_or_else(|| panic!("{id} not adopted"))
    };
    let r = find(&running.task_id);
    assert_eq!(r.run, running);
    match &r.state {
        AdoptedState::Running(d) => {
            assert_eq!(d.container_id, details.container_id);
            assert_eq!(d.pid, details.pid);
        }
        s => panic!("expected Running, got {s:?}"),
    }
    let e = find(&exited.task_id);
    assert_eq!(e.run, exited);
    assert_eq!(e.state, AdoptedState::Exited(ExitStatus::Code(5)));
    let p = find(&prepared.task_id);
    assert_eq!(p.run, prepared);
    assert_eq!(p.state, AdoptedState::Prepared);

    // The adopted running task can be waited for and stopped by the new executor.
    let waiter = again.wait(&running.task_id);
    let stop = again.shutdown(&running.task_id, Duration::from_secs(1));
    let (waited, stopped) = tokio::join!(waiter, stop);
    stopped.expect("shutdown");
    assert!(waited.is_ok(), "{waited:?}");
    // An adopted prepared task can be started.
    again.start(&prepared.task_id).await.expect("start");
    assert_eq!(
        again.wait(&prepared.task_id).await.expect("wait"),
        ExitStatus::Code(0)
    );
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

#[tokio::test]
async fn host_port_answers() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let port = free_port();
    let mut run = task("0000000000000101", &["httpd", "-f", "-p", "80"]);
    run.ports = vec![HostPort {
        published: port,
        target: 80,
        udp: false,
    }];
    exec.prepare(&run).await.expect("prepare");
    exec.start(&run.task_id).await.expect("start");
    let answer = tokio::task::spawn_blocking(move || {
        let mut last = String::new();
        for _ in 0..100 {
            let got = (|| {
                let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
                let mut buf = String::new();
                s.read_to_string(&mut buf)?;
                Ok::<_, std::io::Error>(buf)
            })();
            match got {
                Ok(text) if text.starts_with("HTTP/") => return Ok(text),
                Ok(text) => last = format!("answer {text:?}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last)
    })
    .await
    .expect("join");
    assert!(answer.is_ok(), "no HTTP answer on port {port}: {answer:?}");
}

#[tokio::test]
async fn logs_follow_new_lines() {
    let Some((exec, _c)) = setup().await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let mut run = task(
        "0000000000000201",
        &[
            "sh",
            "-c",
            "echo first; while [ ! -e /data/go ]; do sleep 0.1; done; echo later; sleep 1000",
        ],
    );
    run.mounts = vec![Mount {
        kind: MountKind::Bind,
        source: dir.path().display().to_string(),
        target: "/data".to_string(),
        read_only: true,
    }];
    exec.prepare(&run).await.expect("prepare");
    exec.start(&run.task_id).await.expect("start");
    let mut rx = exec
        .logs(
            &run.task_id,
            LogOptions {
                tail: None,
                follow: true,
            },
        )
        .await
        .expect("logs");
    let first = rx.recv().await.expect("first line");
    assert_eq!(first.text, "first");
    // Only now does the task write its next line.
    std::fs::write(dir.path().join("go"), "").expect("write");
    let later = rx.recv().await.expect("later line");
    assert_eq!(later.text, "later");
    assert_eq!(later.stream, Stream::Stdout);
    drop(rx);
    exec.shutdown(&run.task_id, Duration::from_secs(1))
        .await
        .expect("shutdown");
}

/// A stand-in engine on a Unix socket: enough of the API for `connect`, `find`, `inspect` and a
/// `wait` that never answers; reports when the wait request has arrived.
async fn fake_engine(listener: tokio::net::UnixListener, waiting: tokio::sync::mpsc::Sender<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut held = Vec::new();
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let body = if path.contains("/_ping") {
            "OK".to_string()
        } else if path.contains("/version") {
            r#"{"Version":"20.10.24+fake","ApiVersion":"1.41"}"#.to_string()
        } else if path.contains("/containers/json") {
            r#"[{"Id":"abc","Labels":{"com.shoal.node":"fake","com.shoal.task":"t1"}}]"#.to_string()
        } else if path.contains("/containers/abc/json") {
            // Sparse on purpose: missing fields must not matter.
            r#"{"Id":"abc","State":{"Status":"running","Pid":42,"StartedAt":"2026-01-01T00:00:00Z"}}"#
                .to_string()
        } else if path.contains("/containers/abc/wait") {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                )
                .await;
            let _ = conn.flush().await;
            held.push(conn);
            let _ = waiting.send(()).await;
            continue;
        } else {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = conn.write_all(response.as_bytes()).await;
    }
}

#[tokio::test]
async fn wait_fails_when_the_engine_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
    let (tx, mut waiting) = tokio::sync::mpsc::channel(1);
    let server = tokio::spawn(fake_engine(listener, tx));
    let host = format!("unix://{}", socket.display());
    let exec = ContainerExecutor::connect(Some(&host), "fake")
        .await
        .expect("connect");
    assert_eq!(exec.engine_version(), "20.10.24+fake");
    assert_eq!(exec.host(), host);
    let wait = tokio::spawn(async move { exec.wait("t1").await });
    waiting.recv().await.expect("the wait request");
    // The engine dies: its connections close and nobody listens on the socket any more.
    server.abort();
    let _ = server.await;
    match wait.await.expect("join") {
        Err(ExecError::Runtime(m)) => assert!(m.starts_with("lost the Docker Engine"), "{m}"),
        other => panic!("expected a lost engine, got {other:?}"),
    }
}
