//! `failover-bench`: Raft failover measured on real `shoal agent` processes (default gossip
//! profile), printing one JSON object per (managers, variant) on stdout.
//!
//! Variants: `restart` (kill -9 the leader, time the new election, restart the killed node and
//! time until it knows the leader), `restart-early` (the same, but the next kill comes 0–2 s after
//! the previous restart) and `isolate` (root only: each agent in its own network namespace on a
//! bridge inside a private network namespace; the leader's link is cut for 20 s, then healed).
//!
//! `cargo bench -p shoal-agent --bench failover-bench -- [--managers N] [--variant NAME]
//! [--trials K] [--seed S] [--isolate-secs SECS] [--keep] [--shoal PATH]`

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_agent::api::{InfoView, NodeView, Response};
use shoal_agent::client;

/// Any single wait longer than this is a timed-out trial (its value is recorded as this).
const TIMEOUT: Duration = Duration::from_secs(60);
/// How often the bench polls the agents' control APIs during a measurement.
const POLL: Duration = Duration::from_millis(20);
/// The private subnet of the `isolate` variant (inside the bench's own network namespace).
const SUBNET: &str = "10.213.0";
/// The QUIC port of every agent in the `isolate` variant (each has its own address).
const NETNS_PORT: u16 = 4242;
/// Prefix of the per-agent network namespaces of the `isolate` variant.
const NETNS_PREFIX: &str = "shoal-fb-";
/// The internal flag that marks the re-executed bench inside its private namespaces.
const IN_NETNS: &str = "--in-netns";

/// The scenarios the bench knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Restart,
    RestartEarly,
    Isolate,
}

impl Variant {
    const ALL: [Variant; 3] = [Variant::Restart, Variant::RestartEarly, Variant::Isolate];

    fn name(self) -> &'static str {
        match self {
            Variant::Restart => "restart",
            Variant::RestartEarly => "restart-early",
            Variant::Isolate => "isolate",
        }
    }

    fn parse(s: &str) -> Option<Variant> {
        Variant::ALL.into_iter().find(|v| v.name() == s)
    }

    fn default_trials(self) -> usize {
        match self {
            Variant::Isolate => 5,
            _ => 20,
        }
    }
}

/// The command line.
#[derive(Clone, Debug)]
struct Opts {
    shoal: PathBuf,
    managers: Vec<usize>,
    variants: Vec<Variant>,
    trials: Option<usize>,
    seed: u64,
    isolate_secs: u64,
    keep: bool,
    trace: bool,
    in_netns: bool,
}

fn usage() -> &'static str {
    "usage: failover-bench [--managers N] [--variant restart|restart-early|isolate] [--trials K] \
     [--seed S] [--isolate-secs SECS] [--keep] [--trace] [--shoal PATH]"
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        shoal: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        managers: vec![3, 5],
        variants: Variant::ALL.to_vec(),
        trials: None,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
        isolate_secs: 20,
        keep: false,
        trace: false,
        in_netns: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match a.as_str() {
            // cargo bench passes it to every bench target.
            "--bench" => {}
            "--managers" => {
                let n = number("--managers", value("--managers")?)?;
                if !(1..=50).contains(&n) {
                    return Err("--managers must be between 1 and 50".into());
                }
                o.managers = vec![n as usize];
            }
            "--variant" => {
                let v = value("--variant")?;
                o.variants =
                    vec![Variant::parse(&v).ok_or_else(|| format!("unknown variant {v:?}"))?];
            }
            "--trials" => {
                let k = number("--trials", value("--trials")?)?;
                if k == 0 {
                    return Err("--trials must be at least 1".into());
                }
                o.trials = Some(k as usize);
            }
            "--seed" => o.seed = number("--seed", value("--seed")?)?,
            "--isolate-secs" => {
                o.isolate_secs = number("--isolate-secs", value("--isolate-secs")?)?
            }
            "--shoal" => o.shoal = PathBuf::from(value("--shoal")?),
            "--keep" => o.keep = true,
            "--trace" => o.trace = true,
            IN_NETNS => o.in_netns = true,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(o)
}

/// One agent process and where it lives.
struct Node {
    name: String,
    dir: PathBuf,
    listen: SocketAddr,
    /// Its network namespace (`isolate`), or none (loopback).
    netns: Option<String>,
    /// The bridge-side end of its veth pair (`isolate`).
    veth: Option<String>,
    child: Option<Child>,
    /// Its node id, once it is part of the swarm.
    id: String,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join(shoal_agent::cli::SOCKET_NAME)
    }

    /// Spawns the agent (does not wait for it).
    fn spawn(&mut self, exe: &Path, logs: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .map_err(|e| format!("cannot open the log of {}: {e}", self.name))?;
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        cmd.arg("--data-dir")
            .arg(&self.dir)
            .arg("agent")
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--hostname")
            .arg(&self.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    fn info(&self) -> Option<InfoView> {
        match client::call(self.socket(), "GET", "/v1/info", None) {
            Ok(Response::Info(i)) => Some(i),
            _ => None,
        }
    }

    fn nodes(&self) -> Option<Vec<NodeView>> {
        match client::call(self.socket(), "GET", "/v1/nodes", None) {
            Ok(Response::Nodes { nodes, .. }) => Some(nodes),
            _ => None,
        }
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Response, String> {
        match client::call(self.socket(), method, path, body.as_ref()) {
            Ok(Response::Error { message }) => Err(format!("{}: {message}", self.name)),
            Ok(r) => Ok(r),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of managers for one (managers, variant) run.
struct Cluster {
    nodes: Vec<Node>,
    exe: PathBuf,
    logs: PathBuf,
}

impl Cluster {
    fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The node that its own API says leads, among live nodes (highest term if two claim it).
    fn find_leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.alive() {
                continue;
            }
            if let Some(info) = n.info() {
                if !info.leader.is_empty()
                    && info.leader == info.node_id
                    && best.is_none_or(|(t, _)| info.term > t)
                {
                    best = Some((info.term, i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    /// Whether the node `leader_id` confirms on its own API that it leads.
    fn confirms_leader(&self, leader_id: &str) -> bool {
        self.index_of(leader_id)
            .filter(|&i| self.nodes[i].alive())
            .and_then(|i| self.nodes[i].info())
            .is_some_and(|info| info.leader == leader_id)
    }

    /// Node `i` knows the current leader: its own API names a leader that confirms it leads.
    fn knows_leader(&self, i: usize) -> bool {
        match self.nodes[i].info() {
            Some(info) if !info.leader.is_empty() => {
                info.leader == info.node_id || self.confirms_leader(&info.leader)
            }
            _ => false,
        }
    }

    fn wait_leader(&self) -> Option<usize> {
        poll_until(TIMEOUT, || self.find_leader())
    }

    /// Some live node other than `old` reports a leader that is not `old`.
    fn new_leader_reported(&self, old: usize, tr: &mut Tracer) -> bool {
        let old_id = &self.nodes[old].id;
        let mut found = false;
        for (i, n) in self.nodes.iter().enumerate() {
            if i == old || !n.alive() {
                continue;
            }
            if let Some(info) = n.info() {
                tr.see(self, i, &info);
                if !info.leader.is_empty() && &info.leader != old_id {
                    found = true;
                    if !tr.on {
                        break;
                    }
                }
            }
        }
        found
    }
}

/// `--trace`: prints every change of a node's (term, leader) seen during a wait, on stderr.
struct Tracer {
    on: bool,
    since: Instant,
    last: Vec<Option<(u64, String)>>,
}

impl Tracer {
    fn new(on: bool, nodes: usize) -> Self {
        Tracer {
            on,
            since: Instant::now(),
            last: vec![None; nodes],
        }
    }

    fn see(&mut self, c: &Cluster, i: usize, info: &InfoView) {
        if !self.on {
            return;
        }
        let now = (info.term, info.leader.clone());
        if self.last[i].as_ref() != Some(&now) {
            let who = c
                .index_of(&info.leader)
                .map_or("none", |l| c.nodes[l].name.as_str());
            eprintln!(
                "      +{:.3} s {}: term {}, leader {who}",
                self.since.elapsed().as_secs_f64(),
                c.nodes[i].name,
                info.term
            );
            self.last[i] = Some(now);
        }
    }
}

/// Calls `f` every [`POLL`] until it returns `Some` or `limit` passes.
fn poll_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    s.local_addr().map_err(|e| e.to_string())
}

fn tempdir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("shoal-failover-bench-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err("cannot create a temporary directory".into())
}

/// Starts `managers` agents, inits the swarm on the first and joins the others as managers,
/// waiting after each join until the leader lists every manager so far Ready and Reachable.
fn build_cluster(opts: &Opts, tmp: &Path, managers: usize, netns: bool) -> Result<Cluster, String> {
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    for i in 1..=managers {
        let (listen, ns, veth) = if netns {
            let addr: SocketAddr = format!("{SUBNET}.{i}:{NETNS_PORT}")
                .parse()
                .map_err(|e| format!("{e}"))?;
            (
                addr,
                Some(format!("{NETNS_PREFIX}{i}")),
                Some(format!("vb{i}")),
            )
        } else {
            (free_port()?, None, None)
        };
        nodes.push(Node {
            name: format!("node-{i}"),
            dir: tmp.join(format!("node-{i}")),
            listen,
            netns: ns,
            veth,
            child: None,
            id: String::new(),
        });
    }
    let mut c = Cluster {
        nodes,
        exe: opts.shoal.clone(),
        logs,
    };
    for n in c.nodes.iter_mut() {
        n.spawn(&c.exe, &c.logs)?;
    }
    for n in &c.nodes {
        poll_until(TIMEOUT, || n.info())
            .ok_or_else(|| format!("{} did not serve its control socket", n.name))?;
    }
    c.nodes[0].call("POST", "/v1/swarm/init", Some(serde_json::json!({})))?;
    let token = match c.nodes[0].call("GET", "/v1/swarm/join-token/manager", None)? {
        Response::Token { token, .. } => token,
        other => return Err(format!("unexpected answer to join-token: {other:?}")),
    };
    let remote = c.nodes[0].listen.to_string();
    for i in 1..managers {
        eprintln!("  joining {} as a manager", c.nodes[i].name);
        c.nodes[i].call(
            "POST",
            "/v1/swarm/join",
            Some(serde_json::json!({"token": token, "remote_addr": remote})),
        )?;
        wait_all_ready(&c, i + 1).ok_or_else(|| {
            format!(
                "{} did not become a Ready, Reachable manager",
                c.nodes[i].name
            )
        })?;
    }
    for n in c.nodes.iter_mut() {
        n.id = n
            .info()
            .map(|i| i.node_id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| format!("{} has no node id", n.name))?;
    }
    Ok(c)
}

/// Waits until the leader lists the first `count` nodes as Ready managers, Reachable (or Leader).
fn wait_all_ready(c: &Cluster, count: usize) -> Option<()> {
    poll_until(TIMEOUT, || {
        let l = c.find_leader()?;
        let list = c.nodes[l].nodes()?;
        let ok = c.nodes[..count].iter().all(|n| {
            list.iter().any(|v| {
                v.hostname == n.name
                    && v.status == "Ready"
                    && (v.manager_status == "Reachable" || v.manager_status == "Leader")
            })
        });
        ok.then_some(())
    })
}

/// The samples of one run.
#[derive(Default)]
struct Samples {
    failover: Vec<f64>,
    restart_to_leader: Vec<f64>,
    heal_to_follow: Vec<f64>,
    timeouts: usize,
}

impl Samples {
    /// Records a measurement, or the timeout if it did not finish.
    fn record(which: &mut Vec<f64>, timeouts: &mut usize, took: Option<Duration>) {
        match took {
            Some(d) => which.push(d.as_secs_f64()),
            None => {
                *timeouts += 1;
                which.push(TIMEOUT.as_secs_f64());
            }
        }
    }
}

/// A restarted node whose time to know the leader is still being measured.
struct Pending {
    node: usize,
    spawned: Instant,
    trial: usize,
}

/// Polls the pending restart measurements once; finished or timed-out ones are recorded.
fn poll_pending(c: &Cluster, pending: &mut Vec<Pending>, s: &mut Samples) {
    pending.retain(|p| {
        if c.knows_leader(p.node) {
            let took = p.spawned.elapsed();
            eprintln!(
                "    trial {}: {} knows the leader {:.3} s after its restart",
                p.trial + 1,
                c.nodes[p.node].name,
                took.as_secs_f64()
            );
            Samples::record(&mut s.restart_to_leader, &mut s.timeouts, Some(took));
            false
        } else if p.spawned.elapsed() >= TIMEOUT {
            eprintln!(
                "    trial {}: {} did not learn the leader within {} s (timeout)",
                p.trial + 1,
                c.nodes[p.node].name,
                TIMEOUT.as_secs()
            );
            Samples::record(&mut s.restart_to_leader, &mut s.timeouts, None);
            false
        } else {
            true
        }
    });
}

/// Polls `done` and the pending restarts every [`POLL`] until `done` holds or `limit` passes.
fn wait_with_pending(
    c: &Cluster,
    pending: &mut Vec<Pending>,
    s: &mut Samples,
    limit: Duration,
    mut done: impl FnMut(&Cluster) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    loop {
        poll_pending(c, pending, s);
        if done(c) {
            return Some(start.elapsed());
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(POLL);
    }
}

/// The `restart` and `restart-early` trials.
fn run_restart(
    c: &mut Cluster,
    trials: usize,
    early: bool,
    rng: &mut StdRng,
    trace: bool,
) -> Result<Samples, String> {
    let mut s = Samples::default();
    let mut pending: Vec<Pending> = Vec::new();
    // restart-early: when the next kill is due.
    let mut next_kill: Option<Instant> = None;
    for trial in 0..trials {
        if early {
            if let Some(at) = next_kill {
                let left = at.saturating_duration_since(Instant::now());
                wait_with_pending(c, &mut pending, &mut s, left, |_| false);
            }
        } else {
            // The restarted node must know the leader before the next trial.
            while !pending.is_empty() {
                poll_pending(c, &mut pending, &mut s);
                std::thread::sleep(POLL);
            }
        }
        let Some(li) = wait_with_pending(c, &mut pending, &mut s, TIMEOUT, |c| {
            c.find_leader().is_some()
        })
        .and_then(|_| c.find_leader()) else {
            eprintln!(
                "  trial {}: no leader to kill within {} s (timeout)",
                trial + 1,
                TIMEOUT.as_secs()
            );
            Samples::record(&mut s.failover, &mut s.timeouts, None);
            continue;
        };
        // A restarted node that leads knows the leader: settle it before it is killed.
        poll_pending(c, &mut pending, &mut s);
        if let Some(k) = pending.iter().position(|p| p.node == li) {
            let p = pending.remove(k);
            eprintln!(
                "    trial {}: {} is killed while still measured; recorded at the kill",
                p.trial + 1,
                c.nodes[li].name
            );
            Samples::record(
                &mut s.restart_to_leader,
                &mut s.timeouts,
                Some(p.spawned.elapsed()),
            );
        }
        let killed = c.nodes[li].name.clone();
        let killed_at = Instant::now();
        c.nodes[li].kill();
        let mut tr = Tracer::new(trace, c.nodes.len());
        let failover = wait_with_pending(c, &mut pending, &mut s, TIMEOUT, |c| {
            c.new_leader_reported(li, &mut tr)
        })
        .map(|_| killed_at.elapsed());
        if failover.is_none() {
            dump_survivors(c, li);
        }
        match failover {
            Some(d) => eprintln!(
                "  trial {}/{trials}: killed the leader {killed}; new leader after {:.3} s",
                trial + 1,
                d.as_secs_f64()
            ),
            None => eprintln!(
                "  trial {}/{trials}: killed the leader {killed}; no new leader within {} s (timeout)",
                trial + 1,
                TIMEOUT.as_secs()
            ),
        }
        Samples::record(&mut s.failover, &mut s.timeouts, failover);
        let spawned = Instant::now();
        c.nodes[li].spawn(&c.exe, &c.logs)?;
        pending.push(Pending {
            node: li,
            spawned,
            trial,
        });
        if early {
            let delay = Duration::from_millis(rng.gen_range(0..=2000));
            next_kill = Some(spawned + delay);
        }
    }
    while !pending.is_empty() {
        poll_pending(c, &mut pending, &mut s);
        std::thread::sleep(POLL);
    }
    Ok(s)
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Sets up, inside the bench's private network and mount namespaces, a bridge and one network
/// namespace per agent joined to it by a veth pair (`SUBNET`.N/24).
fn setup_netns(managers: usize) -> Result<(), String> {
    // Keep the namespace handles on a tmpfs of our private mount namespace: nothing is left on
    // the host's /run/netns if the bench dies.
    std::fs::create_dir_all("/run/netns").map_err(|e| format!("mkdir /run/netns: {e}"))?;
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "shoal-fb", "/run/netns"])
        .status()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if !st.success() {
        return Err("mount -t tmpfs on /run/netns failed".into());
    }
    ip(&["link", "set", "lo", "up"])?;
    ip(&["link", "add", "br0", "type", "bridge"])?;
    ip(&["link", "set", "br0", "up"])?;
    for i in 1..=managers {
        let ns = format!("{NETNS_PREFIX}{i}");
        let (vb, ve) = (format!("vb{i}"), format!("ve{i}"));
        let addr = format!("{SUBNET}.{i}/24");
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &vb, "type", "veth", "peer", "name", &ve])?;
        ip(&["link", "set", &ve, "netns", &ns])?;
        ip(&["link", "set", &vb, "master", "br0"])?;
        ip(&["link", "set", &vb, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "addr", "add", &addr, "dev", &ve])?;
        ip(&["-n", &ns, "link", "set", &ve, "up"])?;
    }
    Ok(())
}

fn teardown_netns(managers: usize) {
    for i in 1..=managers {
        let _ = ip(&["link", "del", &format!("vb{i}")]);
        let _ = ip(&["netns", "del", &format!("{NETNS_PREFIX}{i}")]);
    }
    let _ = ip(&["link", "del", "br0"]);
}

/// The `isolate` trials.
fn run_isolate(
    c: &mut Cluster,
    trials: usize,
    isolate: Duration,
    trace: bool,
) -> Result<Samples, String> {
    let mut s = Samples::default();
    let mut none: Vec<Pending> = Vec::new();
    for trial in 0..trials {
        let Some(li) = c.wait_leader() else {
            eprintln!(
                "  trial {}: no leader within {} s (timeout)",
                trial + 1,
                TIMEOUT.as_secs()
            );
            Samples::record(&mut s.failover, &mut s.timeouts, None);
            continue;
        };
        let name = c.nodes[li].name.clone();
        let old_id = c.nodes[li].id.clone();
        let veth = c.nodes[li]
            .veth
            .clone()
            .ok_or("isolate needs network namespaces")?;
        let cut_at = Instant::now();
        ip(&["link", "set", &veth, "down"])?;
        let mut tr = Tracer::new(trace, c.nodes.len());
        let failover = wait_with_pending(c, &mut none, &mut s, TIMEOUT, |c| {
            c.new_leader_reported(li, &mut tr)
        })
        .map(|_| cut_at.elapsed());
        if failover.is_none() {
            dump_survivors(c, li);
        }
        match failover {
            Some(d) => eprintln!(
                "  trial {}/{trials}: cut off the leader {name}; new leader after {:.3} s",
                trial + 1,
                d.as_secs_f64()
            ),
            None => eprintln!(
                "  trial {}/{trials}: cut off the leader {name}; no new leader within {} s (timeout)",
                trial + 1,
                TIMEOUT.as_secs()
            ),
        }
        Samples::record(&mut s.failover, &mut s.timeouts, failover);
        std::thread::sleep(isolate.saturating_sub(cut_at.elapsed()));
        if trace {
            trace_metrics(c, li, "before the heal");
        }
        let healed_at = Instant::now();
        ip(&["link", "set", &veth, "up"])?;
        let mut tr = Tracer::new(trace, c.nodes.len());
        // When each half first held (for the progress line: which one a slow heal waits for).
        let (mut knew, mut ready_seen): (Option<f64>, Option<f64>) = (None, None);
        let follows = |c: &Cluster| -> bool {
            let info = c.nodes[li].info();
            if let Some(i) = &info {
                tr.see(c, li, i);
            }
            let leader = info
                .map(|i| i.leader)
                .filter(|l| !l.is_empty() && l != &old_id && c.confirms_leader(l));
            let at = healed_at.elapsed().as_secs_f64();
            if leader.is_some() && knew.is_none() {
                knew = Some(at);
            }
            let l = match &leader {
                Some(id) => c.index_of(id),
                None => c.find_leader().filter(|&l| l != li),
            };
            let ready = l
                .and_then(|l| c.nodes[l].nodes())
                .is_some_and(|list| list.iter().any(|v| v.id == old_id && v.status == "Ready"));
            if ready && ready_seen.is_none() {
                ready_seen = Some(at);
            }
            leader.is_some() && ready
        };
        let heal =
            wait_with_pending(c, &mut none, &mut s, TIMEOUT, follows).map(|_| healed_at.elapsed());
        if trace {
            trace_metrics(c, li, "after the heal");
        }
        let part = |t: Option<f64>| t.map_or("never".to_string(), |t| format!("{t:.3} s"));
        match heal {
            Some(d) => eprintln!(
                "    healed; {name} follows the leader and is Ready after {:.3} s \
                 (knew the leader at {}, Ready at {})",
                d.as_secs_f64(),
                part(knew),
                part(ready_seen)
            ),
            None => eprintln!(
                "    healed; {name} did not follow the leader within {} s (timeout; knew the \
                 leader at {}, Ready at {})",
                TIMEOUT.as_secs(),
                part(knew),
                part(ready_seen)
            ),
        }
        Samples::record(&mut s.heal_to_follow, &mut s.timeouts, heal);
    }
    Ok(s)
}

/// `--trace`: the transport and Raft counters of node `i` (and of the leader) on stderr.
fn trace_metrics(c: &Cluster, i: usize, when: &str) {
    let leader = c.find_leader().filter(|&l| l != i);
    for n in std::iter::once(i).chain(leader) {
        print_counters(c, n, when);
    }
}

/// After a failover timed out: what every survivor says (term, leader, counters), on stderr.
fn dump_survivors(c: &Cluster, old: usize) {
    for (i, n) in c.nodes.iter().enumerate() {
        if i == old || !n.alive() {
            continue;
        }
        match n.info() {
            Some(info) => {
                let who = c
                    .index_of(&info.leader)
                    .map_or("none", |l| c.nodes[l].name.as_str());
                eprintln!("      {}: term {}, leader {who}", n.name, info.term);
            }
            None => eprintln!("      {}: no answer on its control socket", n.name),
        }
        print_counters(c, i, "at the timeout");
    }
}

/// A few Raft, SWIM and transport counters of node `i` (from its `GET /metrics`) on stderr.
fn print_counters(c: &Cluster, i: usize, when: &str) {
    let wanted = [
        "shoal_raft_term ",
        "shoal_raft_elections_total",
        "shoal_raft_reachable_managers",
        "shoal_transport_connects_total",
        "shoal_transport_connect_failures_total",
        "shoal_transport_queue_full_total",
        "shoal_transport_datagrams_dropped_total",
        "shoal_swim_refutations_total",
        "shoal_swim_members{state=\"alive\"}",
    ];
    let Ok(r) = client::exchange(c.nodes[i].socket(), "GET", "/metrics", None) else {
        return;
    };
    let text = String::from_utf8_lossy(&r.body);
    let picked: Vec<&str> = text
        .lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
        .map(|l| l.trim_start_matches("shoal_"))
        .collect();
    eprintln!("      {} {when}: {}", c.nodes[i].name, picked.join(", "));
}

/// p50, p99 (nearest rank) and max; `null` when there are no samples.
fn summary(v: &[f64]) -> serde_json::Value {
    if v.is_empty() {
        return serde_json::Value::Null;
    }
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let r = (p * sorted.len() as f64).ceil() as usize;
        sorted[r.clamp(1, sorted.len()) - 1]
    };
    serde_json::json!({
        "p50": round(rank(0.50)),
        "p99": round(rank(0.99)),
        "max": round(sorted[sorted.len() - 1]),
    })
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn rounded(v: &[f64]) -> Vec<f64> {
    v.iter().copied().map(round).collect()
}

/// The JSON row of one run, its keys in a fixed order (managers, variant, trials, the summaries,
/// timeouts, samples).
fn row(managers: usize, variant: Variant, trials: usize, s: &Samples) -> String {
    let restarts = variant != Variant::Isolate;
    let opt = |v: &[f64], has: bool| {
        if has {
            summary(v)
        } else {
            serde_json::Value::Null
        }
    };
    let samples = if restarts {
        format!(
            "{{\"failover_s\":{},\"restart_to_leader_s\":{}}}",
            serde_json::json!(rounded(&s.failover)),
            serde_json::json!(rounded(&s.restart_to_leader))
        )
    } else {
        format!(
            "{{\"failover_s\":{},\"heal_to_follow_s\":{}}}",
            serde_json::json!(rounded(&s.failover)),
            serde_json::json!(rounded(&s.heal_to_follow))
        )
    };
    format!(
        "{{\"managers\":{managers},\"variant\":\"{}\",\"trials\":{trials},\"failover_s\":{},\
         \"restart_to_leader_s\":{},\"heal_to_follow_s\":{},\"timeouts\":{},\"samples\":{samples}}}",
        variant.name(),
        ordered(summary(&s.failover)),
        ordered(opt(&s.restart_to_leader, restarts)),
        ordered(opt(&s.heal_to_follow, !restarts)),
        s.timeouts,
    )
}

/// A summary object as `{"p50":..,"p99":..,"max":..}` (or `null`).
fn ordered(v: serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => format!(
            "{{\"p50\":{},\"p99\":{},\"max\":{}}}",
            m["p50"], m["p99"], m["max"]
        ),
        other => other.to_string(),
    }
}

/// One (managers, variant) run in this process; prints its row.
fn run_one(opts: &Opts, managers: usize, variant: Variant, rng: &mut StdRng) -> Result<(), String> {
    let trials = opts.trials.unwrap_or(variant.default_trials());
    let tmp = tempdir()?;
    eprintln!(
        "failover-bench: {managers} managers, {}, {trials} trials (agent logs in {})",
        variant.name(),
        tmp.join("logs").display()
    );
    let netns = variant == Variant::Isolate;
    let result = (|| {
        if netns {
            setup_netns(managers)?;
        }
        let mut c = build_cluster(opts, &tmp, managers, netns)?;
        eprintln!("  {managers} managers Ready and Reachable");
        let s = match variant {
            Variant::Restart => run_restart(&mut c, trials, false, rng, opts.trace)?,
            Variant::RestartEarly => run_restart(&mut c, trials, true, rng, opts.trace)?,
            Variant::Isolate => run_isolate(
                &mut c,
                trials,
                Duration::from_secs(opts.isolate_secs),
                opts.trace,
            )?,
        };
        drop(c);
        Ok::<_, String>(s)
    })();
    if netns {
        teardown_netns(managers);
    }
    match result {
        Ok(s) => {
            println!("{}", row(managers, variant, trials, &s));
            if s.timeouts > 0 || opts.keep {
                eprintln!(
                    "  {} timeouts; agent logs kept in {}",
                    s.timeouts,
                    tmp.join("logs").display()
                );
            } else {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "{managers} managers, {}: {e} (agent logs in {})",
            variant.name(),
            tmp.join("logs").display()
        )),
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Re-executes this bench in a private network and mount namespace for one `isolate` run.
fn run_isolate_child(opts: &Opts, managers: usize, seed: u64) -> Result<(), String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find the bench itself: {e}"))?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--net", "--mount", "--fork", "--"])
        .arg(me)
        .arg(IN_NETNS)
        .args(["--managers", &managers.to_string()])
        .args(["--variant", "isolate"])
        .args(["--seed", &seed.to_string()])
        .args(["--isolate-secs", &opts.isolate_secs.to_string()])
        .arg("--shoal")
        .arg(&opts.shoal);
    if let Some(k) = opts.trials {
        cmd.args(["--trials", &k.to_string()]);
    }
    if opts.keep {
        cmd.arg("--keep");
    }
    if opts.trace {
        cmd.arg("--trace");
    }
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!(
            "{managers} managers, isolate: the namespaced run failed ({st})"
        ))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if !opts.shoal.is_file() {
        eprintln!(
            "no shoal binary at {} (use --shoal PATH)",
            opts.shoal.display()
        );
        return ExitCode::from(2);
    }
    let mut rng = StdRng::seed_from_u64(opts.seed);
    if !opts.in_netns {
        eprintln!(
            "failover-bench: seed {}, shoal {}",
            opts.seed,
            opts.shoal.display()
        );
    }
    let root = is_root();
    let mut failed = false;
    for &m in &opts.managers {
        for &v in &opts.variants {
            let r = if v == Variant::Isolate && !opts.in_netns {
                if !root {
                    eprintln!("failover-bench: skipping isolate ({m} managers): needs root");
                    continue;
                }
                run_isolate_child(&opts, m, rng.gen())
            } else {
                run_one(&opts, m, v, &mut rng)
            };
            if let Err(e) = r {
                eprintln!("failover-bench: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
