//! A harness for end-to-end tests: real `shoal agent` processes on loopback, each in its own
//! data directory, driven through the `shoal` CLI. Every wait polls a condition with a generous
//! deadline (a loaded 2-core machine), never a fixed sleep.

#![allow(dead_code)]

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const SHOAL: &str = env!("CARGO_BIN_EXE_shoal");
/// Longest wait for any condition.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// One scenario at a time: each starts several processes, and a 2-core machine running two
/// clusters at once makes elections flap.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Takes [`SERIAL`] for one scenario (a scenario that panicked leaves it usable).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// One agent.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub listen: String,
    /// Where the agent serves `GET /metrics` over TCP (`--metrics-addr`).
    pub metrics: String,
    /// More `shoal agent` arguments (e.g. `--docker-host`).
    pub args: Vec<String>,
    child: Option<Child>,
}

/// Several agents in one temporary directory.
pub struct Cluster {
    pub tmp: tempfile::TempDir,
    pub nodes: Vec<Node>,
    /// Environment of every agent started (e.g. `SHOAL_SNAPSHOT_EVERY`).
    pub env: Vec<(String, String)>,
}

/// What a CLI call printed.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(o: Output) -> Out {
        Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(self) -> String {
        assert_eq!(
            self.code, 0,
            "command failed: stdout {:?} stderr {:?}",
            self.stdout, self.stderr
        );
        self.stdout
    }

    /// Asserts failure and returns stderr.
    #[track_caller]
    pub fn err(self) -> String {
        assert_ne!(self.code, 0, "command succeeded: {:?}", self.stdout);
        self.stderr
    }
}

fn free_port() -> String {
    free_port_on("127.0.0.1")
}

fn free_port_on(ip: &str) -> String {
    let s = UdpSocket::bind(format!("{ip}:0")).expect("a free port");
    s.local_addr().expect("addr").to_string()
}

/// A TCP port nobody listens on now.
pub fn free_tcp_port_number() -> u16 {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    s.local_addr().expect("addr").port()
}

fn free_tcp_port() -> String {
    let s = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    s.local_addr().expect("addr").to_string()
}

/// `GET path` over plain HTTP/1.1 to `addr`; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let endpoint = shoal_agent::client::Endpoint::Http(addr.to_string());
    let r =
        shoal_agent::client::exchange_within(endpoint, "GET", path, None, Duration::from_secs(10))
            .expect("an HTTP answer");
    (r.status, String::from_utf8_lossy(&r.body).into_owned())
}

impl Cluster {
    /// `n` agents, started, not yet in a swarm (hostnames node-1 … node-n).
    pub fn start(n: usize) -> Cluster {
        Self::start_with_env(n, &[])
    }

    /// `n` agents each on its own loopback address (127.A.B.1 … 127.A.B.n, A and B drawn at
    /// random), as if on separate machines: a port one of them opens (the routing mesh's) is
    /// its own, and each answers DNS on port 53 of its address (`--dns-addr`).
    pub fn start_on_own_addresses(n: usize) -> Cluster {
        let (a, b) = (1 + rand_u64() % 250, 1 + rand_u64() % 250);
        Self::start_at(n, &[], |i| format!("127.{a}.{b}.{}", i + 1))
    }

    /// The IP of agent `i`.
    pub fn ip(&self, i: usize) -> String {
        let listen = &self.nodes[i].listen;
        listen
            .rsplit_once(':')
            .map(|(ip, _)| ip)
            .unwrap_or(listen)
            .to_string()
    }

    /// Like [`Cluster::start`], every agent with these environment variables.
    pub fn start_with_env(n: usize, env: &[(&str, &str)]) -> Cluster {
        Self::start_at(n, env, |_| "127.0.0.1".to_string())
    }

    /// Like [`Cluster::start`], agent `i` (from 0) also given `args(i)`.
    pub fn start_with_args(n: usize, args: impl Fn(usize) -> Vec<String>) -> Cluster {
        let mut c = Self::start_at(0, &[], |_| "127.0.0.1".to_string());
        for _ in 0..n {
            let i = c.nodes.len();
            c.nodes.push(Node {
                name: format!("node-{}", i + 1),
                dir: c.tmp.path().join(format!("node-{}", i + 1)),
                listen: free_port(),
                metrics: free_tcp_port(),
                args: args(i),
                child: None,
            });
            c.spawn(i);
        }
        c
    }

    fn start_at(n: usize, env: &[(&str, &str)], ip: impl Fn(usize) -> String) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut c = Cluster {
            tmp,
            nodes: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for i in 1..=n {
            let dir = c.tmp.path().join(format!("node-{i}"));
            let ip = ip(i - 1);
            let args = if ip == "127.0.0.1" {
                Vec::new()
            } else {
                vec!["--dns-addr".to_string(), format!("{ip}:53")]
            };
            c.nodes.push(Node {
                name: format!("node-{i}"),
                dir,
                listen: free_port_on(&ip),
                metrics: free_tcp_port(),
                args,
                child: None,
            });
        }
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    /// Starts one more agent (not in the swarm yet); returns its index.
    pub fn add(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(Node {
            name: format!("node-{}", i + 1),
            dir: self.tmp.path().join(format!("node-{}", i + 1)),
            listen: free_port(),
            metrics: free_tcp_port(),
            args: Vec::new(),
            child: None,
        });
        self.spawn(i);
        i
    }

    /// Starts (or restarts) agent `i`, waiting until its control socket answers.
    pub fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.tmp.path().join(format!("node-{}.log", i + 1)))
            .expect("log");
        let n = &mut self.nodes[i];
        let child = Command::new(SHOAL)
            .args(["--data-dir"])
            .arg(&n.dir)
            .args(["agent", "--listen", &n.listen, "--hostname", &n.name])
            .args(["--gossip", "local", "--metrics-addr", &n.metrics])
            .args(&n.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the agent");
        n.child = Some(child);
        let name = n.name.clone();
        self.wait(&format!("{name} to answer"), || {
            (self.shoal(i, &["info"]).code == 0).then_some(())
        });
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs the CLI against agent `i`.
    pub fn shoal(&self, i: usize, args: &[&str]) -> Out {
        let o = Command::new(SHOAL)
            .arg("--data-dir")
            .arg(&self.nodes[i].dir)
            .args(args)
            .output()
            .expect("run the CLI");
        Out::from(o)
    }

    /// Runs the CLI against agent `i` with `input` on its standard input.
    pub fn shoal_with_input(&self, i: usize, args: &[&str], input: &str) -> Out {
        use std::io::Write;
        let mut child = Command::new(SHOAL)
            .arg("--data-dir")
            .arg(&self.nodes[i].dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the CLI");
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(input.as_bytes());
        }
        Out::from(child.wait_with_output().expect("the CLI's output"))
    }

    /// Polls `f` until it returns something, or fails the test after [`DEADLINE`] with the
    /// agents' logs.
    #[track_caller]
    pub fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = f() {
                return v;
            }
            if start.elapsed() > DEADLINE {
                let mut logs = String::new();
                for i in 0..self.nodes.len() {
                    let p = self.tmp.path().join(format!("node-{}.log", i + 1));
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    logs.push_str(&format!(
                        "--- node-{} ---\n{}\n",
                        i + 1,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    ));
                }
                panic!("timed out waiting for {what}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `node ls --format json` on agent `i`, one object per node.
    pub fn ls(&self, i: usize) -> Option<Vec<Value>> {
        let out = self.shoal(i, &["node", "ls", "--format", "json"]);
        if out.code != 0 {
            return None;
        }
        out.stdout
            .lines()
            .map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `node inspect NODE` on agent `i`.
    pub fn inspect(&self, i: usize, node: &str) -> Option<Value> {
        let out = self.shoal(i, &["node", "inspect", node]);
        if out.code != 0 {
            return None;
        }
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        v.get(0).cloned()
    }

    /// The hostname of the leader, as agent `i` sees it.
    pub fn leader(&self, i: usize) -> Option<String> {
        let ls = self.ls(i)?;
        ls.iter()
            .find(|n| n["ManagerStatus"] == "Leader")
            .and_then(|n| n["Hostname"].as_str().map(String::from))
    }

    /// The index of the agent named `name`.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .expect("a node of that name")
    }

    /// `swarm init` on agent 0, then joins: the first `managers - 1` others with the manager
    /// token, the rest with the worker token; waits until everyone is Ready and the managers
    /// are voters.
    pub fn form(&self, managers: usize) {
        self.shoal(0, &["swarm", "init"]).ok();
        let mtoken = self
            .shoal(0, &["swarm", "join-token", "-q", "manager"])
            .ok();
        let wtoken = self.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();
        let addr = self.nodes[0].listen.clone();
        for i in 1..self.nodes.len() {
            let token = if i < managers { &mtoken } else { &wtoken };
            let out = self
                .shoal(i, &["swarm", "join", "--token", token.trim(), &addr])
                .ok();
            let role = if i < managers { "manager" } else { "worker" };
            assert_eq!(out.trim(), format!("This node joined a swarm as a {role}."));
        }
        let total = self.nodes.len();
        self.wait("every node Ready and the managers voters", || {
            let ls = self.ls(0)?;
            let ready = ls.iter().filter(|n| n["Status"] == "Ready").count();
            let voters = ls.iter().filter(|n| n["ManagerStatus"] != "").count();
            (ls.len() == total && ready == total && voters == managers).then_some(())
        });
    }
}

/// Kills what the tasks under `dir` left running (shims and their process groups): tasks
/// outlive their agent by design.
pub fn kill_tasks(dir: &std::path::Path) {
    shoal_agent::demo::kill_task_processes(dir);
}

/// Tasks running under `dir`: their pids, from the executor's records, alive now.
pub fn running_task_pids(dir: &std::path::Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir(dir.join("tasks")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if e.path().join("exit.json").exists() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("task.pid")) else {
            continue;
        };
        if let Some(pid) = text
            .split_whitespace()
            .next()
            .and_then(|p| p.parse::<i32>().ok())
        {
            if std::path::Path::new(&format!("/proc/{pid}")).exists() {
                out.push(pid);
            }
        }
    }
    out
}

impl Cluster {
    /// Task processes running on every node now.
    pub fn processes(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| running_task_pids(&n.dir).len())
            .sum()
    }

    /// The command lines of the task processes on every node, sorted.
    pub fn command_lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        for n in &self.nodes {
            for pid in running_task_pids(&n.dir) {
                if let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                    v.push(
                        raw.split(|b| *b == 0)
                            .filter(|p| !p.is_empty())
                            .map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect::<Vec<_>>()
                            .join(" "),
                    );
                }
            }
        }
        v.sort();
        v
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        for n in &self.nodes {
            kill_tasks(&n.dir);
            // The tasks' secrets on the tmpfs (a node that never comes back leaves them).
            let node: Option<Value> = std::fs::read(n.dir.join("node.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if let Some(id) = node.as_ref().and_then(|v| v["node_id"].as_u64()) {
                let _ = std::fs::remove_dir_all(format!("/dev/shm/shoal/{id:016x}"));
            }
        }
    }
}

/// Every file under `dir`.
pub fn files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The forms a string could take in a file: as is (postcard writes bytes as they are),
/// JSON-escaped, hex (the control API's JSON).
pub fn forms(s: &str) -> Vec<Vec<u8>> {
    let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        s.as_bytes().to_vec(),
        serde_json::to_string(s).unwrap().into_bytes(),
        hex.into_bytes(),
    ]
}

/// Whether the file at `path` holds any of `needles`.
pub fn found_in(path: &std::path::Path, needles: &[Vec<u8>]) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    needles
        .iter()
        .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
}

/// A random number (markers a run writes and then looks for).
pub fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id() as u64);
    h.finish()
}

impl Cluster {
    /// Commits `n` small changes through agent 0 (labels `k0`… on node-1): enough entries for
    /// snapshots with a small `SHOAL_SNAPSHOT_EVERY`.
    pub fn label_writes(&self, n: usize) {
        for i in 0..n {
            self.shoal(
                0,
                &[
                    "node",
                    "update",
                    "--label-add",
                    &format!("k{i}=v"),
                    "node-1",
                ],
            )
            .ok();
        }
    }

    /// Waits until each of the first `managers` agents has a snapshot file.
    pub fn wait_snapshots(&self, managers: usize) {
        self.wait("a snapshot file on every manager", || {
            self.nodes[..managers]
                .iter()
                .all(|n| {
                    files(&n.dir.join("raft"))
                        .iter()
                        .any(|p| p.extension().is_some_and(|e| e == "snap"))
                })
                .then_some(())
        });
    }
}
