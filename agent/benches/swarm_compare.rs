//! `swarm-compare`: shoal and Docker Swarm side by side on the same Docker Engine, printing one
//! JSON object per (system, replicas) on stdout and a summary object at the end.
//!
//! Both systems run on one node of their own: a one-node Docker Swarm (`docker swarm init
//! --advertise-addr 127.0.0.1`, driven with the `docker` CLI as an operator would) and a one-node
//! shoal (a `shoal agent` in a temporary data directory, then `shoal swarm init`, driven with the
//! `shoal` CLI). Both start their tasks as containers of the local engine, from a tiny image built
//! without a registry by `shoal_executor::test_image` (`FROM scratch`, Debian's static busybox,
//! its applets linked to it), unless it is there already.
//!
//! A third "system", `engine`, is the floor under both: no orchestrator at all, the bench itself
//! creates and starts the containers through the engine's API (8 at a time, as many as a shoal
//! node starts at once), kills one and starts its replacement at once, and stops them all
//! (same image, command and stop grace period). Neither system can go under the engine's own
//! time for the same work; the summary's `engine_floor` gives each system's time over the
//! engine's and whether the goal (half of Swarm's time) is above the floor at all.
//!
//! The three are set up first (the swarm stays initialised throughout; shoal's agent runs
//! throughout) and then take turns: for each replica count, each round measures the engine,
//! then Swarm, then shoal. This project's machine is a VM whose speed drifts by a factor of two
//! within half an hour (CPU steal); measured one system after the other, the last one paid for
//! it. For every replica count N (10, 50, 100 by default) and every round, each system goes
//! through:
//!
//! 0. The bench waits until the engine has cleaned up after the previous containers (it drops
//!    their network namespaces lazily, about once a minute; a measurement overlapping that
//!    work was up to half slower, so without the wait the order of the runs decided much).
//! 1. `create_s`: from issuing `service create -d --name bench --replicas N IMAGE sleep 100000`
//!    until N containers of the service run.
//! 2. `replace_s`: after a second of rest, one of the service's containers is killed (SIGKILL
//!    through the engine's API); the clock runs until N containers of the service run again and
//!    the killed one is not among them.
//! 3. `scale_down_s`: after a second of rest, from issuing `service scale -d bench=0` until no
//!    container of the service runs. The service is then removed, and the bench waits until none
//!    of its containers (running or not) is left; what is still there after 30 s is removed by
//!    the bench and counted in the row (`left_after_rm`).
//!
//! The order differs from "create N, scale to 0, back to N, kill one" only in saving the scale
//! back up: the kill happens with N running either way.
//!
//! Both systems are measured the same way: the running containers of the service are counted
//! from the engine by label (`com.docker.swarm.service.name=bench` for Swarm,
//! `com.shoal.service=bench` with this cluster's `com.shoal.cluster` for shoal), polled every
//! `--poll-ms` (50 ms) through the Docker Engine API; the CLI processes are part of the clock.
//! Both services are created with `--restart-delay 0s` (the default 5 s of either would only
//! measure the delay) and `--stop-grace-period 0s`: `sleep` runs as PID 1 of its container and
//! ignores SIGTERM, so either system would otherwise wait the default 10 s before SIGKILL on
//! every scale-down (`--stop-grace DURATION` changes both). Swarm gets `--no-resolve-image`, as
//! there is no registry.
//!
//! A row holds the median of the rounds (and every sample when there are several rounds). The
//! summary gives shoal's time over Swarm's for each row and measure, and whether the goal holds:
//! shoal at most half of Swarm's time for every measure of every row.
//!
//! `cargo bench -p shoal-agent --bench swarm-compare -- [--replicas 10,50,100] [--rounds R]
//! [--systems engine,swarm,shoal] [--shoal-runtime container|process] [--image TAG] [--stop-grace D]
//! [--poll-ms MS] [--keep] [--shoal PATH]`
//!
//! `--shoal-runtime process` (a smoke test of the harness where the engine is missing or shoal
//! has no container runtime) runs shoal's tasks as processes: they are then counted from `shoal
//! service ps` (Running tasks) and killed by their process group, and the summary says that
//! the two are not comparable.
//!
//! Clean-up, also on errors, panics, SIGINT and SIGTERM: the bench service is removed from both
//! systems, the swarm is left (only when this bench initialised it: a swarm that was already
//! active is an error, never touched), the shoal agent and its task processes are killed, and
//! containers that remain with the bench service's labels (shoal's: of this bench's cluster
//! only) are removed. No other container is touched. The shoal data directory (with the
//! agent's log) is kept with `--keep` or after a failure.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use serde_json::{json, Value};
use shoal_agent::api::{NodeView, Response};
use shoal_agent::client;
use shoal_executor::{test_image, ContainerExecutor};

/// The service's name, in both systems.
const SERVICE: &str = "bench";
/// Any single wait longer than this fails the run.
const TIMEOUT: Duration = Duration::from_secs(180);
/// How long the shoal node may take to advertise the runtime asked for.
const RUNTIME_WAIT: Duration = Duration::from_secs(10);
/// How long a removed service's containers may stay before the bench removes them itself.
const REMOVE_WAIT: Duration = Duration::from_secs(30);
/// Rest between two measurements of one service.
const SETTLE: Duration = Duration::from_secs(1);
/// The label Swarm puts on its tasks' containers (the service's name).
const SWARM_LABEL: &str = "com.docker.swarm.service.name";
/// The label Swarm puts on its tasks' containers for their node (and shoal does not).
const SWARM_NODE_LABEL: &str = "com.docker.swarm.node.id";
/// The labels shoal puts on its tasks' containers.
const SHOAL_SERVICE_LABEL: &str = "com.shoal.service";
const SHOAL_CLUSTER_LABEL: &str = "com.shoal.cluster";
/// The image both systems run, built when missing (shoal's test image).
const DEFAULT_IMAGE: &str = test_image::DEFAULT_TAG;
/// The goal: shoal's time at most this share of Swarm's.
const GOAL_RATIO: f64 = 0.5;
/// The measures of a row, in the order they are taken.
const MEASURES: [&str; 3] = ["create_s", "replace_s", "scale_down_s"];
/// The keys a row prints first, in this order.
const ROW_KEYS: [&str; 5] = [
    "system",
    "replicas",
    "create_s",
    "scale_down_s",
    "replace_s",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum System {
    /// The engine alone, driven directly: the floor under both systems.
    Engine,
    Swarm,
    Shoal,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Engine => "engine",
            System::Swarm => "swarm",
            System::Shoal => "shoal",
        }
    }
}

/// The command line.
#[derive(Clone, Debug)]
struct Opts {
    shoal: PathBuf,
    replicas: Vec<u64>,
    rounds: usize,
    systems: Vec<System>,
    runtime: String,
    image: String,
    stop_grace: String,
    poll: Duration,
    keep: bool,
}

fn usage() -> &'static str {
    "usage: swarm-compare [--replicas 10,50,100] [--rounds R] [--systems engine,swarm,shoal] \
     [--shoal-runtime container|process] [--image TAG] [--stop-grace DURATION] [--poll-ms MS] \
     [--keep] [--shoal PATH]"
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        shoal: PathBuf::from(env!("CARGO_BIN_EXE_shoal")),
        replicas: vec![10, 50, 100],
        rounds: 1,
        systems: vec![System::Engine, System::Swarm, System::Shoal],
        runtime: "container".into(),
        image: DEFAULT_IMAGE.into(),
        stop_grace: "0s".into(),
        poll: Duration::from_millis(50),
        keep: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let number = |name: &str, v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("{name}: not a number: {v:?}"))
        };
        match a.as_str() {
            // cargo bench passes it to every bench target.
            "--bench" => {}
            "--replicas" => {
                let list = value("--replicas")?;
                let mut ns = Vec::new();
                for part in list.split(',').filter(|p| !p.trim().is_empty()) {
                    let n = number("--replicas", part)?;
                    if !(1..=1000).contains(&n) {
                        return Err("--replicas: each count between 1 and 1000".into());
                    }
                    ns.push(n);
                }
                if ns.is_empty() {
                    return Err("--replicas needs at least one count".into());
                }
                o.replicas = ns;
            }
            "--rounds" => {
                let r = number("--rounds", &value("--rounds")?)?;
                if r == 0 {
                    return Err("--rounds must be at least 1".into());
                }
                o.rounds = r as usize;
            }
            "--systems" => {
                let mut systems = Vec::new();
                for s in value("--systems")?.split(',') {
                    systems.push(match s.trim() {
                        "engine" => System::Engine,
                        "swarm" => System::Swarm,
                        "shoal" => System::Shoal,
                        other => {
                            return Err(format!("--systems: engine, swarm or shoal, not {other:?}"))
                        }
                    });
                }
                o.systems = systems;
            }
            "--shoal-runtime" => {
                let r = value("--shoal-runtime")?;
                if r != "container" && r != "process" {
                    return Err(format!("--shoal-runtime: container or process, not {r:?}"));
                }
                o.runtime = r;
            }
            "--image" => o.image = value("--image")?,
            "--stop-grace" => o.stop_grace = value("--stop-grace")?,
            "--poll-ms" => {
                let ms = number("--poll-ms", &value("--poll-ms")?)?;
                o.poll = Duration::from_millis(ms.max(1));
            }
            "--shoal" => o.shoal = PathBuf::from(value("--shoal")?),
            "--keep" => o.keep = true,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other:?}\n{}", usage())),
        }
    }
    Ok(o)
}

// ------------------------------------------------------------------ the engine

/// The Docker Engine, through its API (bollard on a small runtime of its own: the rest of the
/// bench is plain blocking code).
struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

impl Engine {
    fn connect() -> Result<Engine, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no tokio runtime: {e}"))?;
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| format!("cannot reach the Docker Engine: {e}"))?;
        // The engine may speak an older API than bollard's default (20.10: 1.41).
        let docker = rt
            .block_on(docker.negotiate_version())
            .map_err(|e| format!("cannot reach the Docker Engine: {e}"))?;
        Ok(Engine { rt, docker })
    }

    /// The engine's version and its swarm state (`inactive`, `active`, …).
    fn describe(&self) -> Result<(String, String), String> {
        let info = self
            .rt
            .block_on(self.docker.info())
            .map_err(|e| format!("docker info: {e}"))?;
        let state = info
            .swarm
            .and_then(|s| s.local_node_state)
            .map(|s| s.to_string())
            .unwrap_or_default();
        Ok((info.server_version.unwrap_or_default(), state))
    }

    /// Ids of the containers carrying every one of these labels (`key=value`), running ones
    /// only unless `all`.
    fn containers(&self, labels: &[String], all: bool) -> Result<Vec<String>, String> {
        let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
        filters.insert("label", labels.iter().map(String::as_str).collect());
        let opts = ListContainersOptionsBuilder::new()
            .all(all)
            .filters(&filters)
            .build();
        let list = self
            .rt
            .block_on(self.docker.list_containers(Some(opts)))
            .map_err(|e| format!("listing containers: {e}"))?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    fn kill(&self, id: &str) -> Result<(), String> {
        let opts = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        self.rt
            .block_on(self.docker.kill_container(id, Some(opts)))
            .map_err(|e| format!("killing container {id}: {e}"))
    }

    /// Force-removes the containers carrying these labels; returns how many there were.
    fn remove_all(&self, labels: &[String]) -> usize {
        let ids = self.containers(labels, true).unwrap_or_default();
        for id in &ids {
            let opts = RemoveContainerOptionsBuilder::new().force(true).build();
            let _ = self
                .rt
                .block_on(self.docker.remove_container(id, Some(opts)));
        }
        ids.len()
    }

    fn has_image(&self, tag: &str) -> bool {
        self.rt.block_on(self.docker.inspect_image(tag)).is_ok()
    }
}

/// Makes sure the test image is there (built by the executor's helper unless it is: never
/// pulled).
fn ensure_image(engine: &Engine, tag: &str) -> Result<(), String> {
    engine.rt.block_on(async {
        let exec = ContainerExecutor::connect(None, "swarm-compare")
            .await
            .map_err(|e| e.to_string())?;
        test_image::ensure(&exec, tag).await
    })
}

// ------------------------------------------------------------------ helpers

/// Runs a command to its end; its standard output, or an error with its standard error.
fn run_cmd(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    run_cmd(Command::new(program).args(args))
}

fn tempdir(what: &str) -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..1000u32 {
        let p = base.join(format!(
            "shoal-swarm-compare-{what}-{}-{i}",
            std::process::id()
        ));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err("cannot create a temporary directory".into())
}

fn free_port() -> Result<String, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    s.local_addr()
        .map(|a| a.to_string())
        .map_err(|e| e.to_string())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[(s.len() - 1) / 2]
}

// ------------------------------------------------------------------ the two systems

/// What the bench does with a system: the service's life, and what runs of it.
trait Target {
    fn create(&self, replicas: u64) -> Result<(), String>;
    fn scale(&self, replicas: u64) -> Result<(), String>;
    fn remove(&self) -> Result<(), String>;
    /// Ids of the service's running containers (or tasks).
    fn running(&self) -> Result<Vec<String>, String>;
    /// How many of the service's containers (or task processes) are left, in any state.
    fn left(&self) -> Result<usize, String>;
    /// Kills one container (or task) as from outside.
    fn kill(&self, id: &str) -> Result<(), String>;
    /// Removes what is left of the service's containers (or task processes).
    fn purge(&self);
}

/// The label of the containers the bench starts itself (the engine-only floor).
const ENGINE_LABEL: &str = "com.shoal.bench.engine";
/// Containers the engine-only floor creates, starts or stops at once: as many as a shoal node
/// starts at once.
const ENGINE_CONCURRENCY: usize = 8;

/// No orchestrator at all: the bench creates, starts, kills, replaces and stops the containers
/// itself through the engine's API, `ENGINE_CONCURRENCY` at a time. What it measures is the
/// engine's own cost of the same work, which neither system can go under.
struct Direct<'a> {
    engine: &'a Engine,
    opts: &'a Opts,
    /// The stop grace period in whole seconds (the engine's `t`).
    grace_s: i32,
}

impl<'a> Direct<'a> {
    fn start(engine: &'a Engine, opts: &'a Opts) -> Result<Direct<'a>, String> {
        let g = opts.stop_grace.trim();
        let grace_s = g
            .strip_suffix('s')
            .unwrap_or(g)
            .parse::<i32>()
            .map_err(|_| format!("--stop-grace: whole seconds (like 0s or 10s), not {g:?}"))?;
        let d = Direct {
            engine,
            opts,
            grace_s,
        };
        d.purge();
        Ok(d)
    }

    fn label(&self) -> Vec<String> {
        vec![format!("{ENGINE_LABEL}={SERVICE}")]
    }

    /// Creates and starts `n` containers, `ENGINE_CONCURRENCY` at a time.
    fn start_containers(&self, n: u64) -> Result<(), String> {
        let docker = self.engine.docker.clone();
        let image = self.opts.image.clone();
        self.engine.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            let mut result = Ok(());
            for _ in 0..n {
                if set.len() >= ENGINE_CONCURRENCY {
                    if let Some(Ok(Err(e))) = set.join_next().await {
                        result = Err(e);
                    }
                }
                let (docker, image) = (docker.clone(), image.clone());
                set.spawn(async move {
                    let body = ContainerCreateBody {
                        image: Some(image),
                        cmd: Some(vec!["sleep".into(), "100000".into()]),
                        labels: Some(HashMap::from([(ENGINE_LABEL.into(), SERVICE.into())])),
                        ..Default::default()
                    };
                    let c = docker
                        .create_container(None, body)
                        .await
                        .map_err(|e| format!("creating a container: {e}"))?;
                    docker
                        .start_container(&c.id, None)
                        .await
                        .map_err(|e| format!("starting a container: {e}"))
                });
            }
            while let Some(r) = set.join_next().await {
                if let Ok(Err(e)) = r {
                    result = Err(e);
                }
            }
            result
        })
    }
}

impl Target for Direct<'_> {
    fn create(&self, replicas: u64) -> Result<(), String> {
        self.start_containers(replicas)
    }

    fn scale(&self, replicas: u64) -> Result<(), String> {
        if replicas != 0 {
            return Err("the engine-only floor only scales to 0".into());
        }
        let ids = self.running()?;
        let docker = self.engine.docker.clone();
        let t = self.grace_s;
        self.engine.rt.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for id in ids {
                if set.len() >= ENGINE_CONCURRENCY {
                    let _ = set.join_next().await;
                }
                let docker = docker.clone();
                set.spawn(async move {
                    let opts = StopContainerOptionsBuilder::new().t(t).build();
                    let _ = docker.stop_container(&id, Some(opts)).await;
                });
            }
            while set.join_next().await.is_some() {}
        });
        Ok(())
    }

    fn remove(&self) -> Result<(), String> {
        self.engine.remove_all(&self.label());
        Ok(())
    }

    fn running(&self) -> Result<Vec<String>, String> {
        self.engine.containers(&self.label(), false)
    }

    fn left(&self) -> Result<usize, String> {
        self.engine.containers(&self.label(), true).map(|v| v.len())
    }

    /// Kills the container and starts its replacement at once (an orchestrator that costs
    /// nothing).
    fn kill(&self, id: &str) -> Result<(), String> {
        self.engine.kill(id)?;
        self.start_containers(1)
    }

    fn purge(&self) {
        self.engine.remove_all(&self.label());
    }
}

impl Drop for Direct<'_> {
    fn drop(&mut self) {
        self.purge();
    }
}

/// A one-node Docker Swarm, left (with its service and containers removed) when dropped.
struct Swarm<'a> {
    engine: &'a Engine,
    opts: &'a Opts,
    initialised: bool,
}

impl<'a> Swarm<'a> {
    fn start(engine: &'a Engine, opts: &'a Opts) -> Result<Swarm<'a>, String> {
        let (_, state) = engine.describe()?;
        if state != "inactive" {
            return Err(format!(
                "the engine's swarm is {state:?}: this bench only uses a swarm of its own \
                 (run `docker swarm leave --force` if the swarm is yours and not needed)"
            ));
        }
        let mut s = Swarm {
            engine,
            opts,
            initialised: false,
        };
        run(
            "docker",
            &["swarm", "init", "--advertise-addr", "127.0.0.1"],
        )?;
        s.initialised = true;
        Ok(s)
    }

    fn label(&self) -> Vec<String> {
        // Swarm's own tasks carry the node label too; shoal's containers also carry the
        // service-name label (for tools that read it) and must never be counted or removed here.
        vec![
            format!("{SWARM_LABEL}={SERVICE}"),
            SWARM_NODE_LABEL.to_string(),
        ]
    }
}

impl Target for Swarm<'_> {
    fn create(&self, replicas: u64) -> Result<(), String> {
        let n = replicas.to_string();
        run(
            "docker",
            &[
                "service",
                "create",
                "-d",
                "--name",
                SERVICE,
                "--replicas",
                &n,
                "--restart-delay",
                "0s",
                "--stop-grace-period",
                &self.opts.stop_grace,
                "--no-resolve-image",
                &self.opts.image,
                "sleep",
                "100000",
            ],
        )
        .map(|_| ())
    }

    fn scale(&self, replicas: u64) -> Result<(), String> {
        let pair = format!("{SERVICE}={replicas}");
        run("docker", &["service", "scale", "-d", &pair]).map(|_| ())
    }

    fn remove(&self) -> Result<(), String> {
        run("docker", &["service", "rm", SERVICE]).map(|_| ())
    }

    fn running(&self) -> Result<Vec<String>, String> {
        self.engine.containers(&self.label(), false)
    }

    fn left(&self) -> Result<usize, String> {
        self.engine.containers(&self.label(), true).map(|v| v.len())
    }

    fn kill(&self, id: &str) -> Result<(), String> {
        self.engine.kill(id)
    }

    fn purge(&self) {
        self.engine.remove_all(&self.label());
    }
}

impl Drop for Swarm<'_> {
    fn drop(&mut self) {
        if !self.initialised {
            return;
        }
        let _ = Command::new("docker")
            .args(["service", "rm", SERVICE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = run("docker", &["swarm", "leave", "--force"]) {
            eprintln!("swarm-compare: {e}");
        }
        let removed = self.engine.remove_all(&self.label());
        if removed > 0 {
            eprintln!("swarm-compare: removed {removed} containers Swarm left behind");
        }
    }
}

/// A one-node shoal: one agent in a data directory of its own. Dropping it removes the
/// service, kills the agent and its task processes, and removes the containers of its cluster
/// that are left.
struct Shoal<'a> {
    engine: Option<&'a Engine>,
    opts: &'a Opts,
    dir: PathBuf,
    agent: Option<Child>,
    cluster_id: String,
}

impl<'a> Shoal<'a> {
    fn start(engine: Option<&'a Engine>, opts: &'a Opts, dir: PathBuf) -> Result<Self, String> {
        let mut s = Shoal {
            engine,
            opts,
            dir,
            agent: None,
            cluster_id: String::new(),
        };
        let log = std::fs::File::create(s.dir.join("agent.log"))
            .map_err(|e| format!("cannot create the agent's log: {e}"))?;
        let child = Command::new(&opts.shoal)
            .arg("--data-dir")
            .arg(s.dir.join("node"))
            .args(["agent", "--listen", &free_port()?])
            .args(["--hostname", "shoal-bench", "--gossip", "local"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", opts.shoal.display()))?;
        s.agent = Some(child);
        poll_until(TIMEOUT, opts.poll, || s.info().map(|_| ()))
            .ok_or("the agent did not serve its control socket")?;
        s.cli(&["swarm", "init"])?;
        let info = poll_until(TIMEOUT, opts.poll, || {
            s.info().filter(|i| !i.cluster_id.is_empty())
        })
        .ok_or("the agent did not report its cluster after swarm init")?;
        s.cluster_id = info.cluster_id;
        let seen = |n: Option<NodeView>| {
            n.map_or("no answer".into(), |n| {
                format!(
                    "{}, runtimes {:?}, problems {:?}",
                    n.status, n.runtimes, n.runtime_problems
                )
            })
        };
        poll_until(TIMEOUT, opts.poll, || {
            s.node().filter(|n| n.status == "Ready").map(|_| ())
        })
        .ok_or_else(|| format!("the node did not become Ready: {}", seen(s.node())))?;
        // The runtime is checked again every 2 s: give it a few checks.
        poll_until(RUNTIME_WAIT, opts.poll, || {
            s.node()
                .filter(|n| n.runtimes.contains(&opts.runtime))
                .map(|_| ())
        })
        .ok_or_else(|| {
            format!(
                "the node has no {} runtime ({}); --shoal-runtime process measures the \
                 harness without containers",
                opts.runtime,
                seen(s.node())
            )
        })?;
        Ok(s)
    }

    fn node_dir(&self) -> PathBuf {
        self.dir.join("node")
    }

    fn call(&self, method: &str, path: &str) -> Result<Response, String> {
        let socket = self.node_dir().join(shoal_agent::cli::SOCKET_NAME);
        client::call(&socket, method, path, None).map_err(|e| e.to_string())
    }

    /// The one node, as `node ls` shows it.
    fn node(&self) -> Option<NodeView> {
        match self.call("GET", "/v1/nodes") {
            Ok(Response::Nodes { nodes, .. }) => nodes.into_iter().next(),
            _ => None,
        }
    }

    fn info(&self) -> Option<shoal_agent::api::InfoView> {
        match self.call("GET", "/v1/info") {
            Ok(Response::Info(i)) => Some(i),
            _ => None,
        }
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        run_cmd(
            Command::new(&self.opts.shoal)
                .arg("--data-dir")
                .arg(self.node_dir())
                .args(args),
        )
    }

    fn labels(&self) -> Vec<String> {
        vec![
            format!("{SHOAL_SERVICE_LABEL}={SERVICE}"),
            format!("{SHOAL_CLUSTER_LABEL}={}", self.cluster_id),
        ]
    }

    /// The bench service's current Running tasks: (task id, pid).
    fn running_tasks(&self) -> Result<Vec<(String, u32)>, String> {
        let socket = self.node_dir().join(shoal_agent::cli::SOCKET_NAME);
        let body = json!({ "services": [SERVICE] });
        match client::call(&socket, "POST", "/v1/tasks", Some(&body)) {
            Ok(Response::Tasks { tasks }) => Ok(tasks
                .into_iter()
                .filter(|t| t.current && t.state == "Running")
                .map(|t| (t.id, t.pid))
                .collect()),
            // No such service (any more): nothing runs.
            Ok(Response::Error { message }) if message.contains("not found") => Ok(Vec::new()),
            Ok(other) => Err(format!("unexpected answer to service ps: {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    fn uses_containers(&self) -> bool {
        self.opts.runtime == "container"
    }
}

impl Target for Shoal<'_> {
    fn create(&self, replicas: u64) -> Result<(), String> {
        let n = replicas.to_string();
        let mut args = vec![
            "service",
            "create",
            "-d",
            "--name",
            SERVICE,
            "--replicas",
            &n,
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            &self.opts.stop_grace,
            "--runtime",
            &self.opts.runtime,
        ];
        // The process runtime's "image" is the program.
        if self.uses_containers() {
            args.push(&self.opts.image);
        }
        args.extend(["sleep", "100000"]);
        self.cli(&args).map(|_| ())
    }

    fn scale(&self, replicas: u64) -> Result<(), String> {
        let pair = format!("{SERVICE}={replicas}");
        self.cli(&["service", "scale", "-d", &pair]).map(|_| ())
    }

    fn remove(&self) -> Result<(), String> {
        self.cli(&["service", "rm", SERVICE]).map(|_| ())
    }

    fn running(&self) -> Result<Vec<String>, String> {
        match self.engine {
            Some(e) if self.uses_containers() => e.containers(&self.labels(), false),
            _ => Ok(self
                .running_tasks()?
                .into_iter()
                .map(|(id, _)| id)
                .collect()),
        }
    }

    fn left(&self) -> Result<usize, String> {
        match self.engine {
            Some(e) if self.uses_containers() => {
                e.containers(&self.labels(), true).map(|v| v.len())
            }
            _ => Ok(live_task_groups(&self.node_dir()).len()),
        }
    }

    fn kill(&self, id: &str) -> Result<(), String> {
        match self.engine {
            Some(e) if self.uses_containers() => e.kill(id),
            _ => {
                let (_, pid) = self
                    .running_tasks()?
                    .into_iter()
                    .find(|(t, _)| t == id)
                    .ok_or_else(|| format!("task {id} is not running"))?;
                // A task process leads its own process group.
                run("kill", &["-9", "--", &format!("-{pid}")]).map(|_| ())
            }
        }
    }

    fn purge(&self) {
        match self.engine {
            Some(e) if self.uses_containers() => {
                e.remove_all(&self.labels());
            }
            _ => kill_task_groups(&self.node_dir()),
        }
    }
}

impl Drop for Shoal<'_> {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            // Let the agent stop what it runs; whatever is left is killed below.
            if self.remove().is_ok() {
                let dir = self.node_dir();
                let _ = poll_until(Duration::from_secs(10), self.opts.poll, || {
                    let containers = match self.engine {
                        Some(e) if !self.cluster_id.is_empty() => {
                            e.containers(&self.labels(), true).ok()?.len()
                        }
                        _ => 0,
                    };
                    (containers == 0 && live_task_groups(&dir).is_empty()).then_some(())
                });
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        kill_task_groups(&self.node_dir());
        if let Some(e) = self.engine {
            if !self.cluster_id.is_empty() {
                let removed = e.remove_all(&self.labels());
                if removed > 0 {
                    eprintln!("swarm-compare: removed {removed} containers shoal left behind");
                }
            }
        }
    }
}

/// Process groups of the live process tasks recorded under a data directory (the first number
/// of each `tasks/<id>/task.pid`; a task with `exit.json` has ended).
fn live_task_groups(dir: &Path) -> Vec<i32> {
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
        let pid = text.split_whitespace().next().and_then(|p| p.parse().ok());
        if let Some(pid) = pid.filter(|&p: &i32| p > 1) {
            if Path::new(&format!("/proc/{pid}")).exists() {
                out.push(pid);
            }
        }
    }
    out
}

/// SIGKILLs the process groups of the recorded tasks still alive.
fn kill_task_groups(dir: &Path) {
    for _ in 0..5 {
        let groups = live_task_groups(dir);
        if groups.is_empty() {
            return;
        }
        let targets: Vec<String> = groups.iter().map(|p| format!("-{p}")).collect();
        let _ = Command::new("kill")
            .arg("-9")
            .arg("--")
            .args(&targets)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ------------------------------------------------------------------ interrupts

/// Set by SIGINT or SIGTERM: the bench stops measuring and cleans up.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".into())
    } else {
        Ok(())
    }
}

/// Turns SIGINT and SIGTERM into [`INTERRUPTED`] (from then on, further ones are ignored: the
/// clean-up must not be cut short).
fn catch_signals() -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("no tokio runtime: {e}"))?;
    let (mut int, mut term) = rt
        .block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        })
        .map_err(|e| format!("cannot catch signals: {e}"))?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("swarm-compare: interrupted, cleaning up");
        // Keep the handlers (and so the signals ignored) until the process ends.
        std::thread::park();
        drop((int, term));
    });
    Ok(())
}

// ------------------------------------------------------------------ measurements

/// Calls `f` every `every` until it returns `Some` or `limit` passes.
/// Gives up at once after an interrupt.
fn poll_until<T>(limit: Duration, every: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline || interrupted().is_err() {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Polls the running set from `t0` until `done` holds; the seconds since `t0`.
fn clock_until(
    t: &dyn Target,
    poll: Duration,
    t0: Instant,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Result<f64, String> {
    let mut seen = String::from("nothing yet");
    poll_until(TIMEOUT, poll, || match t.running() {
        Ok(ids) if done(&ids) => Some(t0.elapsed().as_secs_f64()),
        Ok(ids) => {
            seen = format!("{} running", ids.len());
            None
        }
        Err(e) => {
            seen = e;
            None
        }
    })
    .ok_or_else(|| {
        interrupted()
            .err()
            .unwrap_or_else(|| format!("{what}: not done within {} s ({seen})", TIMEOUT.as_secs()))
    })
}

/// One round at `n` replicas: (create_s, replace_s, scale_down_s), and how many containers the
/// system left behind after removing the service (removed by the bench then).
fn measure(
    t: &dyn Target,
    engine: Option<&Engine>,
    n: u64,
    poll: Duration,
) -> Result<([f64; 3], usize), String> {
    let want = n as usize;
    if let Some(e) = engine {
        settle(e)?;
    }
    let t0 = Instant::now();
    t.create(n)?;
    let create = clock_until(t, poll, t0, "create", |ids| ids.len() >= want)?;

    std::thread::sleep(SETTLE);
    interrupted()?;
    let victim = t
        .running()?
        .into_iter()
        .next()
        .ok_or("nothing runs to kill")?;
    let t0 = Instant::now();
    t.kill(&victim)?;
    let replace = clock_until(t, poll, t0, "replace", |ids| {
        ids.len() >= want && !ids.contains(&victim)
    })?;

    std::thread::sleep(SETTLE);
    interrupted()?;
    let t0 = Instant::now();
    t.scale(0)?;
    let down = clock_until(t, poll, t0, "scale down", |ids| ids.is_empty())?;

    t.remove()?;
    let mut left = 0;
    if poll_until(REMOVE_WAIT, poll, || {
        left = t.left().ok()?;
        (left == 0).then_some(())
    })
    .is_none()
    {
        interrupted()?;
        eprintln!(
            "  service rm: {left} containers still there after {} s: removing them",
            REMOVE_WAIT.as_secs()
        );
        t.purge();
    }
    Ok(([create, replace, down], left))
}

/// Every round at every replica count on one system; its rows.
/// Where the local engine keeps its containers' network namespaces.
const NETNS_DIR: &str = "/var/run/docker/netns";
/// The longest wait for the engine to finish cleaning up before a measurement.
const SETTLE_MAX: Duration = Duration::from_secs(120);

/// Waits until the engine has cleaned up the network namespaces of the containers removed
/// before (it does so lazily, about once a minute, and a measurement that overlaps that work
/// is slower by up to a half): at most as many namespaces as running containers, plus the
/// few the engine keeps for itself (a swarm's ingress). Only for a local engine whose
/// directory is readable; otherwise it returns at once.
fn settle(engine: &Engine) -> Result<(), String> {
    let count = || std::fs::read_dir(NETNS_DIR).ok().map(|d| d.count());
    if count().is_none() {
        return Ok(());
    }
    let t0 = Instant::now();
    loop {
        interrupted()?;
        let running = engine.containers(&[], false)?.len();
        let Some(n) = count() else { return Ok(()) };
        if n <= running + 3 {
            return Ok(());
        }
        if t0.elapsed() > SETTLE_MAX {
            eprintln!("  the engine still has {n} network namespaces for {running} running containers: measuring anyway");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Samples of one system at one replica count.
#[derive(Default)]
struct Samples {
    m: [Vec<f64>; 3],
    left_behind: usize,
}

/// One measurement of one system, printed as it is taken.
fn sample(
    t: &dyn Target,
    engine: Option<&Engine>,
    system: System,
    n: u64,
    round: usize,
    opts: &Opts,
    into: &mut Samples,
) -> Result<(), String> {
    interrupted()?;
    let (m, left) = measure(t, engine, n, opts.poll)
        .map_err(|e| format!("{} at {n} replicas, round {round}: {e}", system.name()))?;
    eprintln!(
        "  {} {n} replicas, round {round}: create {:.3} s, replace {:.3} s, scale down {:.3} s",
        system.name(),
        m[0],
        m[1],
        m[2]
    );
    into.left_behind = into.left_behind.max(left);
    for (s, x) in into.m.iter_mut().zip(m) {
        s.push(x);
    }
    Ok(())
}

/// A system's row at one replica count: the medians, and every sample when there are several.
fn row(system: System, n: u64, samples: &Samples, opts: &Opts) -> Value {
    let mut row = json!({"system": system.name(), "replicas": n});
    for (name, s) in MEASURES.iter().zip(&samples.m) {
        row[*name] = json!(round3(median(s)));
    }
    if system == System::Shoal {
        row["runtime"] = json!(opts.runtime);
    }
    if samples.left_behind > 0 {
        row["left_after_rm"] = json!(samples.left_behind);
    }
    let rounds = samples.m[0].len();
    if rounds > 1 {
        row["rounds"] = json!(rounds);
        let all: serde_json::Map<String, Value> = MEASURES
            .iter()
            .zip(&samples.m)
            .map(|(name, s)| {
                let v: Vec<f64> = s.iter().copied().map(round3).collect();
                (name.to_string(), json!(v))
            })
            .collect();
        row["samples"] = Value::Object(all);
    }
    row
}

/// An object as JSON text with these keys first, in this order, then the others (serde_json
/// sorts them).
fn ordered(v: &Value, first: &[&str]) -> String {
    let Value::Object(map) = v else {
        return v.to_string();
    };
    let keys = first
        .iter()
        .copied()
        .filter(|k| map.contains_key(*k))
        .chain(
            map.keys()
                .map(String::as_str)
                .filter(|k| !first.contains(k)),
        );
    let parts: Vec<String> = keys
        .map(|k| format!("{}: {}", Value::from(k), map[k]))
        .collect();
    format!("{{{}}}", parts.join(", "))
}

/// shoal/Swarm for every measure of every replica count both have, and whether the goal holds.
fn summary(
    opts: &Opts,
    engine: &[Value],
    swarm: &[Value],
    shoal: &[Value],
    failed: &[String],
) -> Value {
    let mut ratios = Vec::new();
    let find = |rows: &[Value], n: u64| rows.iter().find(|r| r["replicas"] == n).cloned();
    // Where the goal asks for less than the engine's own time, no orchestrator can meet it.
    let mut floor = Vec::new();
    for &n in &opts.replicas {
        let Some(e) = find(engine, n) else { continue };
        let mut r = json!({"replicas": n});
        for m in MEASURES {
            let base = e[m].as_f64().unwrap_or(0.0);
            let key = m.trim_end_matches("_s");
            let mut x = json!({"engine_s": base});
            for (name, rows) in [("swarm", swarm), ("shoal", shoal)] {
                if let Some(row) = find(rows, n) {
                    let v = row[m].as_f64().unwrap_or(0.0);
                    x[format!("{name}_over_engine")] = json!(round3(v / base.max(1e-9)));
                    if name == "swarm" {
                        x["goal_s"] = json!(round3(v * GOAL_RATIO));
                        x["goal_above_engine"] = json!(v * GOAL_RATIO >= base);
                    }
                }
            }
            r[key] = x;
        }
        floor.push(r);
    }
    let mut goal = !swarm.is_empty() && !shoal.is_empty() && failed.is_empty();
    for &n in &opts.replicas {
        let (Some(a), Some(b)) = (find(swarm, n), find(shoal, n)) else {
            goal = false;
            continue;
        };
        let mut r = json!({"replicas": n});
        for m in MEASURES {
            let (x, y) = (a[m].as_f64().unwrap_or(0.0), b[m].as_f64().unwrap_or(0.0));
            let ratio = if x > 0.0 { y / x } else { f64::INFINITY };
            goal &= ratio <= GOAL_RATIO;
            r[m.trim_end_matches("_s")] = json!(round3(ratio));
        }
        ratios.push(r);
    }
    let comparable = opts.runtime == "container";
    json!({
        "summary": true,
        "ratio": "shoal / swarm",
        "ratios": ratios,
        "engine_floor": floor,
        "goal": format!("shoal <= {GOAL_RATIO} x swarm on every row"),
        "goal_met": goal && comparable,
        "comparable": comparable,
        "shoal_runtime": opts.runtime,
        "rounds": opts.rounds,
        "stop_grace_period": opts.stop_grace,
        "restart_delay": "0s",
        "failed": failed,
    })
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
    if let Err(e) = catch_signals() {
        eprintln!("swarm-compare: {e}");
        return ExitCode::from(1);
    }
    let wants_swarm = opts.systems.contains(&System::Swarm);
    let wants_shoal = opts.systems.contains(&System::Shoal);
    if wants_shoal && !opts.shoal.is_file() {
        eprintln!(
            "no shoal binary at {} (use --shoal PATH)",
            opts.shoal.display()
        );
        return ExitCode::from(2);
    }
    let needs_engine =
        wants_swarm || opts.systems.contains(&System::Engine) || opts.runtime == "container";
    let engine = match Engine::connect() {
        Ok(e) => Some(e),
        Err(e) if needs_engine => {
            eprintln!("swarm-compare: {e}");
            return ExitCode::from(1);
        }
        Err(_) => None,
    };
    if let (Some(e), true) = (&engine, needs_engine) {
        let version = e.describe().map(|v| v.0).unwrap_or_default();
        eprintln!(
            "swarm-compare: Docker Engine {version}, image {}",
            opts.image
        );
        if opts.image == DEFAULT_IMAGE {
            if let Err(err) = ensure_image(e, &opts.image) {
                eprintln!("swarm-compare: the test image {}: {err}", opts.image);
                return ExitCode::from(1);
            }
        } else if !e.has_image(&opts.image) {
            eprintln!("swarm-compare: no image {} on the engine", opts.image);
            return ExitCode::from(1);
        }
    }
    eprintln!(
        "swarm-compare: replicas {:?}, {} round(s), shoal runtime {}, stop grace {}",
        opts.replicas, opts.rounds, opts.runtime, opts.stop_grace
    );

    let mut failed = Vec::new();
    // Every system is set up first; then the measurements take turns (each replica count,
    // each round: engine, Swarm, shoal), so that a machine whose speed drifts (a VM's CPU
    // steal) slows all three alike instead of whichever ran last.
    let direct = match (&engine, opts.systems.contains(&System::Engine)) {
        (Some(e), true) => Direct::start(e, &opts)
            .map_err(|err| failed.push(format!("engine: {err}")))
            .ok(),
        _ => None,
    };
    let swarm = match (&engine, wants_swarm) {
        (Some(e), true) => Swarm::start(e, &opts)
            .map_err(|err| failed.push(format!("swarm: {err}")))
            .ok(),
        _ => None,
    };
    let shoal_dir = if wants_shoal {
        tempdir("shoal").map_err(|e| failed.push(e)).ok()
    } else {
        None
    };
    let shoal = shoal_dir.as_ref().and_then(|dir| {
        Shoal::start(engine.as_ref(), &opts, dir.clone())
            .map_err(|err| failed.push(format!("shoal: {err}")))
            .ok()
    });
    let mut targets: Vec<(System, &dyn Target)> = Vec::new();
    for &system in &opts.systems {
        let t: Option<&dyn Target> = match system {
            System::Engine => direct.as_ref().map(|d| d as &dyn Target),
            System::Swarm => swarm.as_ref().map(|s| s as &dyn Target),
            System::Shoal => shoal.as_ref().map(|s| s as &dyn Target),
        };
        if let Some(t) = t {
            targets.push((system, t));
        }
    }
    let mut rows: HashMap<&'static str, Vec<Value>> = HashMap::new();
    let mut broken: Vec<System> = Vec::new();
    for &n in &opts.replicas {
        let mut samples: HashMap<&'static str, Samples> = HashMap::new();
        for round in 1..=opts.rounds {
            for &(system, t) in &targets {
                if broken.contains(&system) {
                    continue;
                }
                let into = samples.entry(system.name()).or_default();
                if let Err(e) = sample(t, engine.as_ref(), system, n, round, &opts, into) {
                    eprintln!("swarm-compare: {e}");
                    failed.push(e);
                    broken.push(system);
                    samples.remove(system.name());
                }
            }
            if interrupted().is_err() {
                break;
            }
        }
        for &(system, _) in &targets {
            if let Some(s) = samples.get(system.name()).filter(|s| !s.m[0].is_empty()) {
                let r = row(system, n, s, &opts);
                println!("{}", ordered(&r, &ROW_KEYS));
                rows.entry(system.name()).or_default().push(r);
            }
        }
    }
    drop(shoal);
    if let Some(dir) = shoal_dir {
        if wants_shoal && failed.is_empty() && !opts.keep {
            let _ = std::fs::remove_dir_all(&dir);
        } else {
            eprintln!(
                "swarm-compare: shoal's data directory and log kept in {}",
                dir.display()
            );
        }
    }
    drop(swarm);
    drop(direct);
    let take = |rows: &mut HashMap<&'static str, Vec<Value>>, s: System| {
        rows.remove(s.name()).unwrap_or_default()
    };
    let engine_rows = take(&mut rows, System::Engine);
    let swarm_rows = take(&mut rows, System::Swarm);
    let shoal_rows = take(&mut rows, System::Shoal);
    let s = summary(&opts, &engine_rows, &swarm_rows, &shoal_rows, &failed);
    println!(
        "{}",
        ordered(&s, &["summary", "goal_met", "ratio", "ratios"])
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
