//! The network the agents run on. Inside the private namespace: bridge `shj0` at 10.77.0.1/24;
//! node `i` (1-based) in namespace `shj<i>`, its `eth0` at 10.77.0.<10+i>/24, the other end of
//! its veth pair (`v<i>`) on the bridge. Nothing routes out of 10.77.0.0/24.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The subnet of the test network, inside the private namespace only.
pub const SUBNET: &str = "10.77.0.0/24";

/// The environment variable that tells a re-executed suite it is inside its namespace.
const INSIDE: &str = "SHOAL_JEPSEN_INSIDE";

/// Runs the rest of this process inside a private network and mount namespace: returns
/// `Ok(None)` in the re-executed child (go on), or `Ok(Some(status))` in the parent once the
/// child ended (exit with it).
pub fn enter_private_namespace() -> Result<Option<i32>, String> {
    if std::env::var(INSIDE).as_deref() == Ok("1") {
        prepare_inside()?;
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let status = Command::new("unshare")
        // A PID namespace too: when the suite ends, however it ends, the kernel kills every
        // agent it started (the suite is the init of their PID namespace).
        .args([
            "--net",
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1")
        .status()
        .map_err(|e| format!("cannot run unshare (util-linux, and root, are needed): {e}"))?;
    Ok(Some(status.code().unwrap_or(1)))
}

/// In the fresh namespace: its loopback up, and a tmpfs for the named namespaces, so that
/// they vanish with the mount namespace.
fn prepare_inside() -> Result<(), String> {
    std::fs::create_dir_all("/run/netns").map_err(|e| format!("/run/netns: {e}"))?;
    run("mount", &["-t", "tmpfs", "shoal-jepsen", "/run/netns"])?;
    run("ip", &["link", "set", "lo", "up"])
}

/// Runs a set-up command, its failure an error naming it.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// One node's place on the test network.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// 1-based.
    pub index: usize,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the bridge.
    pub ip: String,
}

impl NodeNet {
    /// A command run inside this node's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).arg(program);
        c
    }
}

/// The bridge and the nodes' namespaces (call inside [`enter_private_namespace`]).
pub struct Network {
    /// The nodes, in order.
    pub nodes: Vec<NodeNet>,
}

impl Network {
    /// `n` nodes on the bridge.
    pub fn create(n: usize) -> Result<Network, String> {
        if n == 0 || n > 200 {
            return Err(format!("{n} nodes: 1 to 200"));
        }
        run("ip", &["link", "add", "shj0", "type", "bridge"])?;
        run("ip", &["addr", "add", "10.77.0.1/24", "dev", "shj0"])?;
        run("ip", &["link", "set", "shj0", "up"])?;
        let mut nodes = Vec::new();
        for index in 1..=n {
            let netns = format!("shj{index}");
            let ip = format!("10.77.0.{}", 10 + index);
            let veth = format!("v{index}");
            run("ip", &["netns", "add", &netns])?;
            run(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
                ],
            )?;
            run("ip", &["link", "set", &veth, "master", "shj0", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    &netns,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
            nodes.push(NodeNet { index, netns, ip });
        }
        Ok(Network { nodes })
    }
}

/// A `shoal agent` running in a node's namespace.
pub struct Agent {
    /// Where it runs.
    pub net: NodeNet,
    /// Its data directory.
    pub dir: PathBuf,
    /// Its QUIC address.
    pub listen: String,
    child: Option<Child>,
}

impl Agent {
    /// Starts the agent of `net` with its data in `dir`, its standard error appended to `log`.
    /// The test hooks are on (`SHOAL_TEST_HOOKS=1`: the clock nemesis) and QUIC sends one
    /// datagram at a time (`SHOAL_QUIC_GSO=0`: a packet netem drops is one datagram).
    pub fn start(shoal: &Path, net: &NodeNet, dir: &Path, log: &Path) -> Result<Agent, String> {
        let listen = format!("{}:4700", net.ip);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("log {}: {e}", log.display()))?;
        let child = net
            .command(shoal)
            .arg("--data-dir")
            .arg(dir)
            .args(["agent", "--listen", &listen, "--hostname"])
            .arg(format!("n{}", net.index))
            .args(["--gossip", "local", "--docker-host", "none"])
            .env("SHOAL_TEST_HOOKS", "1")
            .env("SHOAL_QUIC_GSO", "0")
            .env(
                "SHOAL_LOG",
                std::env::var("SHOAL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start the agent of {}: {e}", net.netns))?;
        let mut a = Agent {
            net: net.clone(),
            dir: dir.to_path_buf(),
            listen,
            child: Some(child),
        };
        a.wait_answering(shoal)?;
        Ok(a)
    }

    fn wait_answering(&mut self, shoal: &Path) -> Result<(), String> {
        let start = Instant::now();
        while cli(shoal, &self.dir, &["info"]).is_err() {
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("the agent of {} did not answer", self.net.netns));
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!("the agent of {} exited: {status}", self.net.netns));
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Its control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("shoal.sock")
    }

    /// Its process id while it runs (`ip netns exec` execs the agent: same process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends it a signal by name (`STOP`, `CONT`).
    pub fn signal(&self, name: &str) -> Result<(), String> {
        let pid = self.pid().ok_or("the agent is not running")?;
        run("kill", &[&format!("-{name}"), &pid.to_string()])
    }

    /// kill -9, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command inside a node's namespace, its failure an error naming it.
pub fn run_in(net: &NodeNet, program: &str, args: &[&str]) -> Result<(), String> {
    let out = net
        .command(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program} in {}: {e}", net.netns))?;
    if !out.status.success() {
        return Err(format!(
            "{program} {} in {}: {}",
            args.join(" "),
            net.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs `program` inside a node's namespace with `input` on its standard input.
pub fn run_in_with_input(
    net: &NodeNet,
    program: &str,
    args: &[&str],
    input: &str,
) -> Result<(), String> {
    use std::io::Write;
    let mut child = net
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program} in {}: {e}", net.netns))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| format!("{program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{program} in {}: {}\n{input}",
            net.netns,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Runs the CLI against the agent whose data directory is `dir` (the control socket is a
/// file: reachable from any namespace); its standard output, or the error it printed.
pub fn cli(shoal: &Path, dir: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(shoal)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", shoal.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Forms a swarm of `agents`: the first initialises it, the next `managers - 1` join as
/// managers and the rest as workers; waits until every node is Ready.
pub fn form(shoal: &Path, agents: &[Agent], managers: usize) -> Result<(), String> {
    let first = agents.first().ok_or("no agents")?;
    cli(shoal, &first.dir, &["swarm", "init"])?;
    let token = |role: &str| cli(shoal, &first.dir, &["swarm", "join-token", "-q", role]);
    let (mtoken, wtoken) = (token("manager")?, token("worker")?);
    for (i, a) in agents.iter().enumerate().skip(1) {
        let t = if i < managers { &mtoken } else { &wtoken };
        cli(
            shoal,
            &a.dir,
            &["swarm", "join", "--token", t.trim(), &first.listen],
        )?;
    }
    let start = Instant::now();
    loop {
        let ls = cli(shoal, &first.dir, &["node", "ls", "--format", "json"]).unwrap_or_default();
        let ready = ls
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|n| n["Status"] == "Ready")
            .count();
        if ready == agents.len() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(180) {
            return Err(format!(
                "{ready} of {} nodes Ready after 180 s",
                agents.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs a command in the private namespace itself (the bridge side), its failure an error.
pub fn host_run(program: &str, args: &[&str]) -> Result<(), String> {
    run(program, args)
}
