//! `shoal demo`: a local cluster of 3 managers and 2 workers as child processes on loopback, in
//! a temporary directory, walked through init and joins, a promotion, a demotion, the leader
//! killed and restarted, and a drain — printing `node ls` after each step — then a service
//! whose node is killed, its tasks shown rescheduled with `service ps`. The service runs Docker
//! containers (a busybox image built locally) when an engine answers, processes otherwise.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use crate::api::{NodeView, Response, TaskView};
use crate::cli::DemoArgs;
use crate::{client, format};

/// How long any step may take before the demo gives up (generous: a loaded machine).
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

/// The local Docker Engine, when the demo runs containers.
struct Engine {
    rt: tokio::runtime::Runtime,
    exec: shoal_executor::ContainerExecutor,
}

impl Engine {
    /// The engine with the demo's image built, or why not.
    fn get() -> Result<Engine, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("no tokio runtime: {e}"))?;
        let exec = rt
            .block_on(shoal_executor::ContainerExecutor::connect(
                None,
                "shoal-demo",
            ))
            .map_err(|e| e.to_string())?;
        rt.block_on(shoal_executor::test_image::ensure(
            &exec,
            shoal_executor::test_image::DEFAULT_TAG,
        ))?;
        Ok(Engine { rt, exec })
    }

    /// Force-removes the containers carrying `label` (`key=value`).
    fn remove(&self, label: String) {
        let _ = self.rt.block_on(self.exec.remove_labelled(&[label]));
    }
}

struct Proc {
    name: String,
    dir: PathBuf,
    listen: SocketAddr,
    child: Option<Child>,
}

impl Proc {
    fn socket(&self) -> PathBuf {
        self.dir.join(crate::cli::SOCKET_NAME)
    }

    fn start(&mut self, exe: &Path, logs: &Path) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(logs.join(format!("{}.log", self.name)))
            .map_err(|e| format!("cannot open the log of {}: {e}", self.name))?;
        let child = Command::new(exe)
            .arg("agent")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(self.listen.to_string())
            .arg("--hostname")
            .arg(&self.name)
            .arg("--gossip")
            .arg("local")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.name))?;
        self.child = Some(child);
        let sock = self.socket();
        wait(
            &format!("{} to serve its control socket", self.name),
            || {
                matches!(
                    client::call(&sock, "GET", "/v1/info", None),
                    Ok(Response::Info(_))
                )
                .then_some(())
            },
        )
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The machine dies: the agent and every task process it started.
    fn kill_machine(&mut self) {
        self.kill();
        kill_task_processes(&self.dir);
    }

    /// The machine dies with its containers too.
    fn kill_machine_with(&mut self, engine: Option<&Engine>, node_id: &str) {
        self.kill_machine();
        if let Some(e) = engine.filter(|_| !node_id.is_empty()) {
            e.remove(format!(
                "{}={node_id}",
                shoal_executor::container::LABEL_NODE
            ));
        }
    }
}

/// Kills every task process an agent with data directory `dir` started (each task's process
/// group and its shim), found through the process runtime's records: tasks outlive their agent
/// by design, so a demo, a test or a bench that stops agents stops their tasks this way.
pub fn kill_task_processes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("tasks")) else {
        return;
    };
    for e in entries.flatten() {
        for (file, group) in [("task.pid", true), ("shim.pid", false)] {
            let pid = std::fs::read_to_string(e.path().join(file))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
            if let Some(pid) = pid.filter(|p| *p > 1) {
                let target = if group {
                    format!("-{pid}")
                } else {
                    pid.to_string()
                };
                let _ = Command::new("kill")
                    .args(["-9", "--", &target])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_machine();
    }
}

fn free_port() -> Result<SocketAddr, String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| format!("no free UDP port: {e}"))?;
    s.local_addr().map_err(|e| e.to_string())
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn call(
    p: &Proc,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<Response, String> {
    match client::call(p.socket(), method, path, body.as_ref()) {
        Ok(Response::Error { message }) => Err(message),
        Ok(r) => Ok(r),
        Err(e) => Err(e.to_string()),
    }
}

fn say(p: &Proc, method: &str, path: &str, body: Option<serde_json::Value>) -> Result<(), String> {
    if let Response::Ok { message } = call(p, method, path, body)? {
        if !message.is_empty() {
            println!("{message}");
        }
    }
    Ok(())
}

fn nodes(p: &Proc) -> Option<(String, Vec<NodeView>)> {
    match call(p, "GET", "/v1/nodes", None) {
        Ok(Response::Nodes { self_id, nodes }) => Some((self_id, nodes)),
        _ => None,
    }
}

fn ls(p: &Proc) -> Result<(), String> {
    let (me, list) = nodes(p).ok_or_else(|| format!("node ls on {} failed", p.name))?;
    println!("\n$ shoal node ls    # on {}", p.name);
    print!("{}", format::node_table(&me, &list));
    println!();
    Ok(())
}

fn step(title: &str) {
    println!("==> {title}");
}

fn by_name<'a>(list: &'a [NodeView], name: &str) -> Option<&'a NodeView> {
    list.iter().find(|n| n.hostname == name)
}

/// Runs the demo; returns the process exit code.
pub fn run(args: &DemoArgs) -> ExitCode {
    let tmp = match tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    let engine = match Engine::get() {
        Ok(e) => {
            println!(
                "containers: the Docker Engine {} answers at {}; the demo's service runs \
                 {} containers (built locally, never pulled)",
                e.exec.engine_version(),
                e.exec.host(),
                shoal_executor::test_image::DEFAULT_TAG
            );
            Some(e)
        }
        Err(why) => {
            println!(
                "processes: no usable Docker Engine ({why}); the demo's service runs processes"
            );
            None
        }
    };
    let mut cluster = String::new();
    let result = demo(&tmp, engine.as_ref(), &mut cluster);
    if let Some(e) = engine.as_ref().filter(|_| !cluster.is_empty()) {
        e.remove(format!(
            "{}={cluster}",
            shoal_executor::container::LABEL_CLUSTER
        ));
    }
    let mut code = ExitCode::SUCCESS;
    if let Err(e) = &result {
        eprintln!("Error: demo failed: {e}");
        eprintln!("(agent logs are in {})", tmp.join("logs").display());
        code = ExitCode::from(1);
    }
    if args.keep || result.is_err() {
        println!("kept {}", tmp.display());
    } else {
        let _ = std::fs::remove_dir_all(&tmp);
        println!("stopped the 5 agents and removed {}", tmp.display());
    }
    code
}

fn tempdir() -> Result<PathBuf, String> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("shoal-demo-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    Err("cannot create a temporary directory".into())
}

fn demo(tmp: &Path, engine: Option<&Engine>, cluster: &mut String) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the shoal binary: {e}"))?;
    let logs = tmp.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    let mut procs = Vec::new();
    for i in 1..=5 {
        procs.push(Proc {
            name: format!("node-{i}"),
            dir: tmp.join(format!("node-{i}")),
            listen: free_port()?,
            child: None,
        });
    }
    step("starting 5 agents on loopback (3 will be managers, 2 workers)");
    for p in procs.iter_mut() {
        p.start(&exe, &logs)?;
    }

    step("shoal swarm init    # on node-1");
    say(
        &procs[0],
        "POST",
        "/v1/swarm/init",
        Some(serde_json::json!({})),
    )?;
    let token = |role: &str| -> Result<String, String> {
        match call(
            &procs[0],
            "GET",
            &format!("/v1/swarm/join-token/{role}"),
            None,
        )? {
            Response::Token { token, .. } => Ok(token),
            _ => Err("unexpected answer to join-token".into()),
        }
    };
    if let Ok(Response::Info(info)) = call(&procs[0], "GET", "/v1/info", None) {
        *cluster = info.cluster_id;
    }
    let (mtoken, wtoken) = (token("manager")?, token("worker")?);
    let leader_addr = procs[0].listen.to_string();
    for (i, t) in [(1, &mtoken), (2, &mtoken), (3, &wtoken), (4, &wtoken)] {
        step(&format!(
            "shoal swarm join --token … {leader_addr}    # on {}",
            procs[i].name
        ));
        say(
            &procs[i],
            "POST",
            "/v1/swarm/join",
            Some(serde_json::json!({"token": t, "remote_addr": leader_addr})),
        )?;
    }
    wait("3 managers and 2 workers, all Ready", || {
        let (_, list) = nodes(&procs[0])?;
        let managers = list.iter().filter(|n| !n.manager_status.is_empty()).count();
        let ready = list.iter().filter(|n| n.status == "Ready").count();
        (list.len() == 5 && managers == 3 && ready == 5).then_some(())
    })?;
    ls(&procs[0])?;

    step("shoal node promote node-4    (learner, catches up, becomes a voter)");
    say(&procs[0], "POST", "/v1/nodes/node-4/promote", None)?;
    wait("node-4 to be a manager", || {
        let (_, list) = nodes(&procs[0])?;
        let n = by_name(&list, "node-4")?;
        (n.role == "manager" && n.manager_status == "Reachable").then_some(())
    })?;
    ls(&procs[0])?;

    step("shoal node demote node-2");
    say(&procs[0], "POST", "/v1/nodes/node-2/demote", None)?;
    wait("node-2 to be a worker", || {
        let (_, list) = nodes(&procs[0])?;
        let n = by_name(&list, "node-2")?;
        (n.role == "worker" && n.manager_status.is_empty()).then_some(())
    })?;
    ls(&procs[0])?;

    let leader = {
        let (_, list) = nodes(&procs[0]).ok_or("node ls failed")?;
        list.iter()
            .find(|n| n.manager_status == "Leader")
            .map(|n| n.hostname.clone())
            .ok_or("no leader")?
    };
    let li = procs
        .iter()
        .position(|p| p.name == leader)
        .ok_or("leader not found")?;
    let other = procs
        .iter()
        .position(|p| {
            p.name != leader && (p.name == "node-1" || p.name == "node-3" || p.name == "node-4")
        })
        .ok_or("no other manager")?;
    step(&format!("kill -9 the leader ({leader})"));
    let killed_at = Instant::now();
    procs[li].kill();
    let new_leader = wait("a new leader", || {
        let (_, list) = nodes(&procs[other])?;
        list.iter()
            .find(|n| n.manager_status == "Leader" && n.hostname != leader)
            .map(|n| n.hostname.clone())
    })?;
    println!(
        "new leader: {new_leader}, {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    wait(&format!("{leader} to show Down and Unreachable"), || {
        let (_, list) = nodes(&procs[other])?;
        let n = by_name(&list, &leader)?;
        (n.status == "Down" && n.manager_status == "Unreachable").then_some(())
    })?;
    ls(&procs[other])?;

    step(&format!(
        "restart {leader} (same data directory: it rejoins with its identity)"
    ));
    procs[li].start(&exe, &logs)?;
    wait(&format!("{leader} Ready and Reachable again"), || {
        let (_, list) = nodes(&procs[other])?;
        let n = by_name(&list, &leader)?;
        (n.status == "Ready" && n.manager_status == "Reachable").then_some(())
    })?;
    ls(&procs[other])?;

    step("shoal node update --availability drain node-5");
    say(
        &procs[other],
        "POST",
        "/v1/nodes/node-5/update",
        Some(serde_json::json!({"availability": "drain"})),
    )?;
    wait("node-5 drained", || {
        let (_, list) = nodes(&procs[other])?;
        (by_name(&list, "node-5")?.availability == "Drain").then_some(())
    })?;
    ls(&procs[other])?;

    let mut spec = match engine {
        Some(_) => {
            step(&format!(
                "shoal service create --name web --replicas 6 {} sleep 100000",
                shoal_executor::test_image::DEFAULT_TAG
            ));
            let mut spec =
                shoal_cluster::ServiceSpec::new("web", shoal_executor::test_image::DEFAULT_TAG, 6);
            spec.task.runtime = shoal_cluster::Runtime::Container;
            spec.task.args = vec!["sleep".into()];
            spec
        }
        None => {
            step("shoal service create --name web --replicas 6 --runtime process sleep 100000");
            let mut spec = shoal_cluster::ServiceSpec::new("web", "sleep", 6);
            spec.task.runtime = shoal_cluster::Runtime::Process;
            spec
        }
    };
    spec.task.args.push("100000".into());
    say(
        &procs[other],
        "POST",
        "/v1/services/create",
        Some(serde_json::json!({ "spec": spec })),
    )?;
    let running = |p: &Proc| -> Option<Vec<TaskView>> {
        match call(
            p,
            "POST",
            "/v1/tasks",
            Some(serde_json::json!({"services": ["web"]})),
        ) {
            Ok(Response::Tasks { tasks }) => Some(tasks),
            _ => None,
        }
    };
    let tasks = wait("6 tasks of web running", || {
        let t = running(&procs[other])?;
        let up = t
            .iter()
            .filter(|t| t.current && t.state == "Running" && t.desired_state == "Running")
            .count();
        (up == 6).then_some(t)
    })?;
    ps(&procs[other], &tasks);
    // The worker running tasks (node-2, demoted earlier, or the first node with tasks that is
    // not the manager we talk to).
    let victim = ["node-2", "node-3", "node-1", "node-4"]
        .into_iter()
        .filter(|n| *n != procs[other].name && *n != new_leader)
        .max_by_key(|n| tasks.iter().filter(|t| t.current && t.node == *n).count())
        .ok_or("no node to kill")?;
    let vi = procs
        .iter()
        .position(|p| p.name == victim)
        .ok_or("victim not found")?;
    let on_victim = tasks
        .iter()
        .filter(|t| t.current && t.node == victim)
        .count();
    let what = if engine.is_some() {
        "containers"
    } else {
        "task processes"
    };
    step(&format!(
        "kill -9 {victim} and its {what} (the machine dies: {on_victim} of web's tasks)"
    ));
    let victim_id = nodes(&procs[other])
        .and_then(|(_, list)| by_name(&list, victim).map(|n| n.id.clone()))
        .unwrap_or_default();
    let killed_at = Instant::now();
    procs[vi].kill_machine_with(engine, &victim_id);
    let tasks = wait("web back to 6 running tasks elsewhere", || {
        let t = running(&procs[other])?;
        let up = t
            .iter()
            .filter(|t| {
                t.current
                    && t.state == "Running"
                    && t.desired_state == "Running"
                    && t.node != victim
            })
            .count();
        (up == 6).then_some(t)
    })?;
    println!(
        "rescheduled: all 6 running again {:.1} s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    ps(&procs[other], &tasks);

    step("shoal service rm web");
    say(&procs[other], "DELETE", "/v1/services/web", None)?;
    step("stopping the agents");
    for p in procs.iter_mut() {
        p.kill_machine();
    }
    Ok(())
}

fn ps(p: &Proc, tasks: &[TaskView]) {
    println!("\n$ shoal service ps web    # on {}", p.name);
    print!(
        "{}",
        crate::cli::service::task_table(tasks, false, crate::raft_driver::now_ms())
    );
    println!();
}
