//! Services of Docker containers on real agents and the local Docker Engine: replicas spread
//! over the agents, limits and labels as the engine shows them, a killed container replaced by
//! the restart policy, `service logs`, an agent restarted under running containers re-adopting
//! them (no duplicate, no orphan, other tools' containers untouched), a missing image rejected,
//! a host-mode port answering, and the engine going away and coming back.
//!
//! Skipped (with a line on stderr saying why) when no engine is usable, except under
//! `SHOAL_REQUIRE_DOCKER=1` (CI), where that fails the tests.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, KillContainerOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use common::{serial, Cluster};
use serde_json::Value;
use shoal_executor::test_image::{engine_for_tests, DEFAULT_TAG};

/// The local engine, for what the test checks and does behind shoal's back.
struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

/// One container as the engine lists it.
#[derive(Clone, Debug)]
struct Ctr {
    id: String,
    running: bool,
    labels: HashMap<String, String>,
}

impl Engine {
    /// The engine with the test image built, or `None` (skip) when there is none.
    fn get() -> Option<Engine> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(engine_for_tests("shoal-agent-tests"))?;
        let docker = rt.block_on(async {
            Docker::connect_with_local_defaults()
                .expect("docker client")
                .negotiate_version()
                .await
                .expect("docker version")
        });
        Some(Engine { rt, docker })
    }

    /// Containers (running or not) carrying `label` (`key=value`).
    fn list(&self, label: &str) -> Vec<Ctr> {
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(options)))
            .unwrap_or_default();
        list.into_iter()
            .map(|c| Ctr {
                id: c.id.unwrap_or_default(),
                running: c.state.map(|s| s.to_string()).as_deref() == Some("running"),
                labels: c.labels.unwrap_or_default(),
            })
            .collect()
    }

    /// Running containers of a shoal service.
    fn running(&self, service: &str) -> Vec<Ctr> {
        self.list(&format!("com.shoal.service={service}"))
            .into_iter()
            .filter(|c| c.running)
            .collect()
    }

    fn inspect(&self, id: &str) -> Value {
        let info = self
            .rt
            .block_on(self.docker.inspect_container(id, None))
            .expect("inspect");
        serde_json::to_value(info).expect("json")
    }

    fn kill(&self, id: &str) {
        let options = KillContainerOptionsBuilder::new().signal("KILL").build();
        self.rt
            .block_on(self.docker.kill_container(id, Some(options)))
            .expect("kill");
    }

    fn remove(&self, id: &str) {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = self
            .rt
            .block_on(self.docker.remove_container(id, Some(options)));
    }

    /// A container of another tool: no shoal label, running `sleep`.
    fn foreign(&self, name: &str) -> String {
        let body = bollard::models::ContainerCreateBody {
            image: Some(DEFAULT_TAG.to_string()),
            cmd: Some(vec!["sleep".into(), "1000".into()]),
            labels: Some(HashMap::from([(
                "org.example.tool".to_string(),
                "other".to_string(),
            )])),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(name).build();
        self.remove(name);
        let id = self
            .rt
            .block_on(self.docker.create_container(Some(options), body))
            .expect("create")
            .id;
        self.rt
            .block_on(self.docker.start_container(&id, None))
            .expect("start");
        id
    }

    /// Removes whatever the tests left of a cluster (on failure too).
    fn clean(&self, cluster_id: &str) {
        if cluster_id.is_empty() {
            return;
        }
        for c in self.list(&format!("com.shoal.cluster={cluster_id}")) {
            self.remove(&c.id);
        }
    }
}

/// `service ps SERVICE` rows of current tasks: (name, node, desired, current, error).
fn ps(c: &Cluster, i: usize, service: &str) -> Vec<(String, String, String, String, String)> {
    let out = c.shoal(i, &["service", "ps", "--no-trunc", service]);
    let mut rows = Vec::new();
    for line in out.stdout.lines().skip(1) {
        let cols: Vec<&str> = line
            .split("   ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if cols.len() < 6 || cols[1].starts_with("\\_") {
            continue;
        }
        rows.push((
            cols[1].to_string(),
            cols[3].to_string(),
            cols[4].to_string(),
            cols[5].to_string(),
            cols.get(6).map(|s| s.to_string()).unwrap_or_default(),
        ));
    }
    rows
}

/// Nodes of the current Running tasks of `service`.
fn running_on(c: &Cluster, i: usize, service: &str) -> Vec<String> {
    ps(c, i, service)
        .into_iter()
        .filter(|r| r.2 == "Running" && r.3.starts_with("Running"))
        .map(|r| r.1)
        .collect()
}

/// node id (16 hex digits) by hostname.
fn node_ids(c: &Cluster) -> BTreeMap<String, String> {
    c.ls(0)
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["Hostname"].as_str().unwrap_or("").to_string(),
                n["ID"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn cluster_id(c: &Cluster) -> String {
    let out = c.shoal(0, &["info", "--format", "json"]);
    serde_json::from_str::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v["cluster_id"].as_str().map(String::from))
        .unwrap_or_default()
}

/// Cleans the engine when the test ends, passed or failed: the agents first (dropped after
/// this, they would make the containers of their tasks again), then the containers.
struct Cleanup<'a> {
    engine: &'a Engine,
    cluster: String,
    foreign: Vec<String>,
    agents: Vec<PathBuf>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for dir in &self.agents {
            let _ = std::process::Command::new("pkill")
                .args(["-9", "-f", &format!("--data-dir {} agent", dir.display())])
                .status();
        }
        self.engine.clean(&self.cluster);
        for f in &self.foreign {
            self.engine.remove(f);
        }
    }
}

#[test]
fn containers_spread_restart_adopt_and_go() {
    let _g = serial();
    let Some(engine) = Engine::get() else { return };
    let mut c = Cluster::start(3);
    c.form(1);
    let mut cleanup = Cleanup {
        engine: &engine,
        cluster: cluster_id(&c),
        foreign: Vec::new(),
        agents: c.nodes.iter().map(|n| n.dir.clone()).collect(),
    };
    assert!(!cleanup.cluster.is_empty());
    // Every agent found the engine: node ls shows its version, node inspect the runtime.
    let ls = c.ls(0).unwrap();
    let version = engine
        .rt
        .block_on(engine.docker.version())
        .unwrap()
        .version
        .unwrap();
    for n in &ls {
        assert_eq!(n["EngineVersion"], version.as_str(), "{n}");
    }
    let node3 = c.inspect(0, "node-3").unwrap();
    assert!(
        node3["runtimes"]
            .as_array()
            .unwrap()
            .contains(&Value::from("container")),
        "{node3}"
    );

    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "cweb",
            "--replicas",
            "4",
            "--restart-delay",
            "0s",
            "--limit-cpu",
            "0.5",
            "--limit-memory",
            "64M",
            "--stop-grace-period",
            "1s",
            DEFAULT_TAG,
            "sh",
            "-c",
            "echo hello from $SHOAL_TASK_SLOT; exec sleep 1000",
        ],
    )
    .ok();
    let nodes = c.wait("4 tasks of cweb running on 3 nodes", || {
        let on = running_on(&c, 0, "cweb");
        let distinct: BTreeSet<&String> = on.iter().collect();
        (on.len() == 4 && distinct.len() == 3).then_some(on)
    });
    assert_eq!(nodes.len(), 4);
    let ctrs = c.wait("4 running containers of cweb", || {
        let r = engine.running("cweb");
        (r.len() == 4).then_some(r)
    });
    // Labels and limits as the engine shows them.
    let ids = node_ids(&c);
    for ctr in &ctrs {
        assert_eq!(ctr.labels["com.shoal.cluster"], cleanup.cluster);
        assert!(ids.values().any(|id| *id == ctr.labels["com.shoal.node"]));
        assert_eq!(ctr.labels["com.shoal.service"], "cweb");
        assert_eq!(ctr.labels["com.shoal.task"].len(), 16);
        let info = engine.inspect(&ctr.id);
        assert_eq!(info["HostConfig"]["NanoCpus"], 500_000_000, "{info}");
        assert_eq!(info["HostConfig"]["Memory"], 64 << 20, "{info}");
    }
    // Logs come from the engine.
    c.wait("the tasks' output in service logs", || {
        let out = c.shoal(0, &["service", "logs", "cweb"]).stdout;
        (1..=4)
            .all(|s| out.contains(&format!("hello from {s}")))
            .then_some(())
    });

    // A killed container: its task fails with the exit code, the slot gets a new one.
    let victim = ctrs[0].clone();
    engine.kill(&victim.id);
    c.wait("the killed container's slot running again", || {
        let r = engine.running("cweb");
        (r.len() == 4 && r.iter().all(|x| x.id != victim.id)).then_some(())
    });
    c.wait("the failure in service ps", || {
        let out = c.shoal(0, &["service", "ps", "--no-trunc", "cweb"]).stdout;
        out.contains("task: non-zero exit (137)").then_some(())
    });

    // A health check run by the engine: the update waits for healthy containers.
    c.shoal(
        0,
        &[
            "service",
            "update",
            "--health-cmd",
            "test -d /tmp",
            "--health-interval",
            "500ms",
            "--update-parallelism",
            "0",
            "--update-monitor",
            "1s",
            "cweb",
        ],
    )
    .ok();
    let ps_out = c.shoal(0, &["service", "ps", "cweb"]).ok();
    assert_eq!(ps_out.matches("Running (healthy)").count(), 4, "{ps_out}");
    for ctr in engine.running("cweb") {
        let info = engine.inspect(&ctr.id);
        assert_eq!(
            info["Config"]["Healthcheck"]["Test"],
            serde_json::json!(["CMD-SHELL", "test -d /tmp"]),
            "{info}"
        );
        assert_eq!(info["State"]["Health"]["Status"], "healthy", "{info}");
    }

    // The agent of node-3 dies and comes back: its containers run on, and are adopted.
    let n3 = c.index("node-3");
    let id3 = ids["node-3"].clone();
    let on3: BTreeSet<String> = engine
        .running("cweb")
        .into_iter()
        .filter(|x| x.labels["com.shoal.node"] == id3)
        .map(|x| x.id)
        .collect();
    assert!(!on3.is_empty());
    // And a service only node-3 runs, removed while its agent is away: an orphan to clean.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "csolo",
            "--constraint",
            "node.hostname==node-3",
            "--stop-grace-period",
            "1s",
            DEFAULT_TAG,
            "sleep",
            "1000",
        ],
    )
    .ok();
    c.wait("csolo running", || {
        (engine.running("csolo").len() == 1).then_some(())
    });
    let foreign = format!("shoal-test-foreign-{}", std::process::id());
    engine.foreign(&foreign);
    cleanup.foreign.push(foreign.clone());
    c.kill(n3);
    c.shoal(0, &["service", "rm", "csolo"]).ok();
    assert_eq!(engine.running("csolo").len(), 1, "nobody stopped it yet");
    c.spawn(n3);
    c.wait("node-3's orphan removed", || {
        engine
            .list("com.shoal.service=csolo")
            .is_empty()
            .then_some(())
    });
    c.wait(
        "cweb at 4 running, node-3's containers the same ones",
        || {
            let r = engine.running("cweb");
            let now3: BTreeSet<String> = r
                .iter()
                .filter(|x| x.labels["com.shoal.node"] == id3)
                .map(|x| x.id.clone())
                .collect();
            let on = running_on(&c, 0, "cweb");
            (r.len() == 4 && now3 == on3 && on.len() == 4).then_some(())
        },
    );
    let foreign_info = engine.inspect(&foreign);
    assert_eq!(
        foreign_info["State"]["Running"], true,
        "another tool's container is never touched"
    );

    // A missing image: rejected with the engine's words, never pulled.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "ghost",
            "shoal-test/no-such-image:1",
        ],
    )
    .ok();
    c.wait("ghost rejected", || {
        let out = c.shoal(0, &["service", "ps", "--no-trunc", "ghost"]).stdout;
        (out.contains("Rejected") && out.contains("No such image: shoal-test/no-such-image:1"))
            .then_some(())
    });
    c.shoal(0, &["service", "rm", "ghost"]).ok();

    // service rm: every container goes.
    c.shoal(0, &["service", "rm", "cweb"]).ok();
    c.wait("every container of cweb removed", || {
        engine
            .list("com.shoal.service=cweb")
            .is_empty()
            .then_some(())
    });
}

/// A Unix-socket proxy to the engine that the test can cut and restore: the engine "goes away"
/// for the one agent that talks to it through the proxy.
struct Proxy {
    path: PathBuf,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<UnixStream>>>,
}

impl Proxy {
    fn start(path: &Path) -> Proxy {
        let p = Proxy {
            path: path.to_path_buf(),
            up: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        p.restore();
        p
    }

    /// Serves again (a new listener on the same path).
    fn restore(&self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind the proxy");
        self.up.store(true, Ordering::SeqCst);
        let up = self.up.clone();
        let conns = self.conns.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if !up.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(engine) = UnixStream::connect("/var/run/docker.sock") else {
                    continue;
                };
                {
                    let mut c = conns.lock().unwrap();
                    c.push(client.try_clone().unwrap());
                    c.push(engine.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), engine.try_clone().unwrap()),
                    (engine, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }

    /// The engine goes away: no new connection is served, every open one is cut.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and drops the listener.
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn host_ports_bind_and_an_engine_that_goes_away_comes_back() {
    let _g = serial();
    let Some(engine) = Engine::get() else { return };
    let mut c = Cluster::start(2);
    // node-2 talks to the engine through a proxy the test can cut.
    let proxy = Proxy::start(&c.tmp.path().join("engine.sock"));
    c.kill(1);
    c.nodes[1].args = vec![
        "--docker-host".into(),
        format!("unix://{}", proxy.path.display()),
    ];
    c.spawn(1);
    c.form(1);
    let _cleanup = Cleanup {
        engine: &engine,
        cluster: cluster_id(&c),
        foreign: Vec::new(),
        agents: c.nodes.iter().map(|n| n.dir.clone()).collect(),
    };

    // A host-mode port answers on the task's node.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "chttp",
            "-p",
            &format!("published={port},target=80,mode=host"),
            "--stop-grace-period",
            "1s",
            DEFAULT_TAG,
            "sh",
            "-c",
            "mkdir -p /www && echo hello over http > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )
    .ok();
    let ls = c.shoal(0, &["service", "ls"]).ok();
    assert!(ls.contains(&format!("*:{port}->80/tcp")), "{ls}");
    let body = c.wait("the published port to answer", || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("hello over http").then_some(out)
    });
    assert!(body.starts_with("HTTP/1."), "{body}");
    // `service ps` shows the running task's host-mode port, as Swarm does.
    let ps = c.wait("service ps to show the running task's port", || {
        let ps = c.shoal(0, &["service", "ps", "chttp"]).ok();
        ps.lines()
            .any(|l| l.contains("Running") && l.contains(&format!("*:{port}->80/tcp")))
            .then_some(ps)
    });
    assert!(ps.contains("chttp.1"), "{ps}");
    c.shoal(0, &["service", "rm", "chttp"]).ok();

    // Published as 0: the engine picks the port, and `service ps` and inspect say which.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "cany",
            "-p",
            "target=80,mode=host",
            "--stop-grace-period",
            "1s",
            DEFAULT_TAG,
            "sh",
            "-c",
            "mkdir -p /www && echo picked by the engine > /www/index.html && exec httpd -f -p 80 -h /www",
        ],
    )
    .ok();
    let picked: u16 = c.wait("the task's engine-picked port in service ps", || {
        let ps = c.shoal(0, &["service", "ps", "cany"]).ok();
        let line = ps.lines().find(|l| l.contains("Running"))?;
        let at = line.find("*:")?;
        let port: u16 = line[at + 2..].split("->").next()?.parse().ok()?;
        (port != 0 && line.contains("->80/tcp")).then_some(port)
    });
    let body = c.wait("the engine-picked port to answer", || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", picked)).ok()?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        out.contains("picked by the engine").then_some(out)
    });
    assert!(body.starts_with("HTTP/1."), "{body}");
    c.shoal(0, &["service", "rm", "cany"]).ok();

    // A service with a task on each node; then node-2's engine goes away.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "caway",
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "2",
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            DEFAULT_TAG,
            "sleep",
            "1000",
        ],
    )
    .ok();
    c.wait("caway on both nodes", || {
        let on: BTreeSet<String> = running_on(&c, 0, "caway").into_iter().collect();
        (on.len() == 2).then_some(())
    });
    proxy.cut();
    c.wait("node-2 says its container runtime is unavailable", || {
        let n = c.inspect(0, "node-2")?;
        let problems = n["runtime_problems"].as_array()?.clone();
        let runtimes = n["runtimes"].as_array()?.clone();
        (!problems.is_empty() && !runtimes.contains(&Value::from("container"))).then_some(())
    });
    c.wait("caway's 2 tasks running on node-1", || {
        let on = running_on(&c, 0, "caway");
        (on.len() == 2 && on.iter().all(|n| n == "node-1")).then_some(())
    });
    let out = c.shoal(0, &["node", "inspect", "--pretty", "node-2"]).ok();
    assert!(out.contains("Unavailable:"), "{out}");

    // The engine comes back: the runtime is advertised again, and the container node-2 left
    // running (its task failed when the engine went away) is stopped.
    proxy.restore();
    c.wait("node-2 advertising containers again", || {
        let n = c.inspect(0, "node-2")?;
        n["runtimes"]
            .as_array()?
            .contains(&Value::from("container"))
            .then_some(())
    });
    let id2 = node_ids(&c)["node-2"].clone();
    c.wait("node-2's leftover container stopped", || {
        let r = engine.running("caway");
        (r.len() == 2 && r.iter().all(|x| x.labels["com.shoal.node"] != id2)).then_some(())
    });
    c.shoal(0, &["service", "rm", "caway"]).ok();
    c.wait("every container of caway removed", || {
        engine
            .list("com.shoal.service=caway")
            .is_empty()
            .then_some(())
    });
}
