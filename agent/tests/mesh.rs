//! The routing mesh end to end, on real agents each on its own loopback address: a 3-replica
//! HTTP service (a small Python server, one process per task) answers on its published port
//! on every node, those running none of its tasks included, spreads requests over its tasks,
//! answers UDP, loses no request through a start-first rolling update nor when a task's node
//! is killed, counts what it carried in `/metrics`, resolves `web` and `tasks.web` on every
//! node's name server, refuses a second service on its port, and stops answering when removed.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::*;

/// Answers `GET` with its task id over HTTP/1.1 on `SHOAL_PORT_80`, and echoes UDP datagrams
/// prefixed with its task id on `SHOAL_PORT_53`.
const SERVER: &str = r#"
import os, socket, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
tid = os.environ["SHOAL_TASK_ID"]
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (tid + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(os.environ["SHOAL_PORT_53"])))
    while True:
        d, a = s.recvfrom(65536)
        s.sendto(tid.encode() + b":" + d, a)
threading.Thread(target=udp, daemon=True).start()
ThreadingHTTPServer(("0.0.0.0", int(os.environ["SHOAL_PORT_80"])), H).serve_forever()
"#;

/// The Python interpreter's real path (a task's environment has no shell set-up).
fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 (the mesh tests' HTTP server) must be installed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// One `GET /` on a new connection: the task id that answered.
fn get(addr: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: mesh\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
        return Err(format!("answer {:?}", &text[..text.len().min(40)]));
    }
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    Ok(body.trim().to_string())
}

/// One datagram to `addr`: the answer.
fn udp(addr: &str, payload: &str) -> Option<String> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(payload.as_bytes(), addr).ok()?;
    let mut buf = [0u8; 512];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The A records `name` has on the name server at `dns` (`None`: NXDOMAIN or no answer).
fn lookup(dns: &str, name: &str) -> Option<Vec<String>> {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::{Name, RecordType};
    let mut q = Message::query();
    q.metadata.id = 4242;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.send_to(&q.to_vec().ok()?, dns).ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    let r = Message::from_vec(&buf[..n]).ok()?;
    if r.metadata.id != 4242 || r.metadata.response_code != ResponseCode::NoError {
        return None;
    }
    Some(r.answers.iter().map(|a| a.data.to_string()).collect())
}

/// Current tasks of `service`: (task id, node, desired, current state).
fn tasks(c: &Cluster, i: usize, service: &str) -> Vec<(String, String, String, String)> {
    let out = c.shoal(i, &["service", "ps", "--no-trunc", service]);
    out.stdout
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line
                .split("   ")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            (cols.len() >= 6 && !cols[1].starts_with("\\_")).then(|| {
                (
                    cols[0].to_string(),
                    cols[3].to_string(),
                    cols[4].to_string(),
                    cols[5].to_string(),
                )
            })
        })
        .collect()
}

/// Requests made over and over on new connections, each tried a second time if the first
/// attempt fails (what "at most one failed attempt per connection" allows a client).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    first_failures: Arc<AtomicU64>,
    lost: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<std::collections::BTreeSet<String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(addrs: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let first_failures = Arc::new(AtomicU64::new(0));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
        let thread = {
            let (stop, ok, first_failures, lost, seen) = (
                stop.clone(),
                ok.clone(),
                first_failures.clone(),
                lost.clone(),
                seen.clone(),
            );
            std::thread::spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let addr = &addrs[i % addrs.len()];
                    i += 1;
                    let answer = get(addr).or_else(|e| {
                        first_failures.fetch_add(1, Ordering::Relaxed);
                        get(addr).map_err(|e2| format!("{addr}: {e}, then {e2}"))
                    });
                    match answer {
                        Ok(task) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            seen.lock().unwrap().insert(task);
                        }
                        Err(e) => lost.lock().unwrap().push(e),
                    }
                }
            })
        };
        Load {
            stop,
            ok,
            first_failures,
            lost,
            seen,
            thread: Some(thread),
        }
    }

    /// Waits for `n` more answered requests (the load is going on).
    fn more(&self, c: &Cluster, n: u64) {
        let from = self.ok.load(Ordering::Relaxed);
        c.wait("requests answered", || {
            (self.ok.load(Ordering::Relaxed) >= from + n).then_some(())
        });
    }

    /// Stops; returns (answered, first attempts failed, lost requests, tasks that answered).
    fn finish(mut self) -> (u64, u64, Vec<String>, std::collections::BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.first_failures.load(Ordering::Relaxed),
            self.lost.lock().unwrap().clone(),
            self.seen.lock().unwrap().clone(),
        )
    }
}

#[test]
fn the_mesh_answers_everywhere_through_updates_and_node_loss() {
    let _g = serial();
    let python = python();
    let mut c = Cluster::start_on_own_addresses(4);
    c.form(3);
    let script = c.tmp.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let port = free_tcp_port_number();
    let addrs: Vec<String> = (0..4).map(|i| format!("{}:{port}", c.ip(i))).collect();
    let at = |i: usize| addrs[i].clone();
    let out = c
        .shoal(
            0,
            &[
                "service",
                "create",
                "--detach",
                "--name",
                "web",
                "--runtime",
                "process",
                "--replicas",
                "3",
                "-p",
                &format!("{port}:80"),
                "-p",
                &format!("{port}:53/udp"),
                &python,
                script.to_str().unwrap(),
            ],
        )
        .ok();
    assert!(!out.trim().is_empty());
    let ls = c.shoal(0, &["service", "ls"]).ok();
    assert!(
        ls.contains(&format!("*:{port}->80/tcp,*:{port}->53/udp")),
        "{ls}"
    );
    let running = c.wait("3 tasks running", || {
        let t = tasks(&c, 0, "web");
        (t.len() == 3 && t.iter().all(|t| t.3.starts_with("Running"))).then_some(t)
    });
    // Each task shows the port of its node the mesh reaches it on.
    let ps = c.shoal(0, &["service", "ps", "web"]).ok();
    assert!(ps.contains("->80/tcp") && ps.contains("->53/udp"), "{ps}");
    let ids: std::collections::BTreeSet<String> = running.iter().map(|t| t.0.clone()).collect();
    let busy: Vec<&String> = running.iter().map(|t| &t.1).collect();
    let idle = (0..4)
        .find(|i| !busy.contains(&&c.nodes[*i].name))
        .expect("4 nodes, 3 tasks spread: one node runs none");

    // Every node answers, the one without a task too, and the requests reach every task.
    let mut seen = std::collections::BTreeSet::new();
    c.wait("every node's port answering, from every task", || {
        for i in 0..4 {
            seen.insert(get(&at(i)).ok()?);
        }
        (seen == ids).then_some(())
    });
    for _ in 0..3 {
        assert!(ids.contains(&get(&at(idle)).unwrap()));
    }
    // UDP too, on every node.
    for i in 0..4 {
        let answer = c.wait("a UDP answer", || udp(&at(i), "ping"));
        let (task, echoed) = answer.split_once(':').unwrap();
        assert!(ids.contains(task), "{answer}");
        assert_eq!(echoed, "ping");
    }

    // Service discovery: every node's name server answers `web` with its own mesh address
    // and `tasks.web` with the task's nodes; inspect and the endpoints API show the same.
    let task_ips: std::collections::BTreeSet<String> = running
        .iter()
        .map(|t| {
            let i = c.nodes.iter().position(|n| n.name == t.1).unwrap();
            c.ip(i)
        })
        .collect();
    for i in 0..4 {
        let dns = format!("{}:53", c.ip(i));
        assert_eq!(lookup(&dns, "web"), Some(vec![c.ip(i)]));
        let tasks_of = c.wait("tasks.web resolved", || {
            let ips = lookup(&dns, "tasks.web.")?;
            (ips.len() == task_ips.len()).then_some(ips)
        });
        assert_eq!(
            tasks_of
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>(),
            task_ips
        );
        assert_eq!(lookup(&dns, "nope"), None, "unknown names: NXDOMAIN");
    }
    let inspect = c.shoal(0, &["service", "inspect", "--pretty", "web"]).ok();
    assert!(inspect.contains("Endpoints:"), "{inspect}");
    assert_eq!(inspect.matches("(ready)").count(), 3, "{inspect}");
    let socket = c.nodes[0].dir.join(shoal_agent::cli::SOCKET_NAME);
    let r =
        shoal_agent::client::exchange(&socket, "GET", "/v1/services/web/endpoints", None).unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(r.status, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(e["name"], "web");
    assert!(
        ids.iter().any(|t| e["tasks"][0]["task"] == *t),
        "task ids as service ps shows them: {body}"
    );
    assert_eq!(e["tasks"].as_array().unwrap().len(), 3, "{body}");
    assert_eq!(e["ports"][0]["published"], port);

    // A second service may not take the port.
    let e = c
        .shoal(
            0,
            &[
                "service",
                "create",
                "--name",
                "clash",
                "--runtime",
                "process",
                "-p",
                &format!("{port}:81"),
                "/bin/sleep",
                "60",
            ],
        )
        .err();
    assert!(
        e.contains(&format!("port {port}/tcp is already in use by service web")),
        "{e}"
    );

    // A start-first rolling update under a steady request loop on every node loses nothing.
    let load = Load::start((0..4).map(at).collect());
    load.more(&c, 50);
    c.shoal(
        0,
        &[
            "service",
            "update",
            "--update-order",
            "start-first",
            "--force",
            "web",
        ],
    )
    .ok();
    let updated = c.wait("3 new tasks running", || {
        let t = tasks(&c, 0, "web");
        (t.len() == 3
            && t.iter()
                .all(|t| t.3.starts_with("Running") && !ids.contains(&t.0)))
        .then_some(t)
    });
    load.more(&c, 50);
    let (answered, first_failures, lost, seen) = load.finish();
    assert!(lost.is_empty(), "requests lost in the update: {lost:?}");
    assert_eq!(first_failures, 0, "no attempt failed in the update");
    let new_ids: std::collections::BTreeSet<String> = updated.iter().map(|t| t.0.clone()).collect();
    assert!(
        seen.intersection(&new_ids).count() == 3,
        "the new tasks answered: {seen:?} {new_ids:?} ({answered} requests)"
    );

    // Kill a node running a task (not node 0, the one driven), its tasks with it: the other
    // nodes go on answering, each request at worst after one failed attempt.
    let victim = (1..4)
        .find(|i| updated.iter().any(|t| t.1 == c.nodes[*i].name))
        .expect("a task on a node other than node-1");
    let others: Vec<String> = (0..4).filter(|i| *i != victim).map(at).collect();
    let load = Load::start(others);
    load.more(&c, 50);
    c.kill(victim);
    kill_tasks(&c.nodes[victim].dir);
    let victim_name = c.nodes[victim].name.clone();
    c.wait("the lost task replaced", || {
        let t = tasks(&c, 0, "web");
        (t.iter()
            .filter(|t| t.3.starts_with("Running") && t.1 != victim_name)
            .count()
            == 3)
            .then_some(())
    });
    load.more(&c, 50);
    let (_, _, lost, _) = load.finish();
    assert!(
        lost.is_empty(),
        "requests lost after the node died: {lost:?}"
    );

    // What the mesh carried shows in /metrics, per service and backend.
    let metrics = http_get(&c.nodes[0].metrics, "/metrics").1;
    let carried = metrics
        .lines()
        .filter(|l| l.starts_with("shoal_ingress_connections_total{service=\"web\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>();
    assert!(carried > 0, "{metrics}");
    assert!(
        metrics.contains(&format!(
            "shoal_ingress_listening{{service=\"web\",port=\"{port}/tcp\"}} 1"
        )),
        "{metrics}"
    );

    // Removed: no node answers on the port any more.
    c.shoal(0, &["service", "rm", "web"]).ok();
    for i in (0..4).filter(|i| *i != victim) {
        c.wait("the port closed", || {
            TcpStream::connect(at(i)).is_err().then_some(())
        });
    }
}
