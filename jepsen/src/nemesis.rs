//! The nemeses: faults as start/stop pairs. Partitions are grudges (who drops whom) installed
//! with one `nft -f` transaction per node; kills are `kill -9` and a restart on the same data;
//! pauses are SIGSTOP/SIGCONT; packet faults are netem on both ends of a node's veth; clock
//! faults go through the agents' test clock hook; membership churn promotes, demotes, removes
//! and joins nodes, only when the change is safe.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::json;
use shoal_agent::api::Response;
use shoal_sim::rng::Rng;

use crate::db::{call, Db, OP_TIMEOUT};
use crate::testbed::{run_in_with_input, Agent};

/// Every nemesis, by the name `--nemesis` takes.
pub const ALL: &[&str] = &["partition", "kill", "pause", "netem", "clock", "membership"];

/// The partition shapes the partition nemesis picks from.
pub const PARTITIONS: &[&str] = &[
    "halves",
    "isolate-one",
    "isolate-leader",
    "majorities-ring",
    "bridge",
    "leader-majority",
    "leader-minority",
];

/// A fault in force, and how to heal it.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Node → the nodes it drops packets from (1-based).
    Partition(BTreeMap<usize, BTreeSet<usize>>),
    /// Killed nodes, to restart.
    Kill {
        /// 1-based.
        nodes: Vec<usize>,
        /// The killed node led (failover is measured).
        leader: bool,
    },
    /// Paused nodes, to continue.
    Pause(Vec<usize>),
    /// Nodes with netem on their veth.
    Netem(Vec<usize>),
    /// Nodes with a skewed clock.
    Clock(Vec<usize>),
    /// A membership change: nothing to heal (the change stands), the next one may undo it.
    Membership,
}

/// Names nodes `n1 n3`.
pub fn names(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| format!("n{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (1..=n).collect();
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

/// Grudges that cut `a` from `b` both ways.
fn cut(a: &[usize], b: &[usize]) -> BTreeMap<usize, BTreeSet<usize>> {
    let mut g: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for &x in a {
        for &y in b {
            g.entry(x).or_default().insert(y);
            g.entry(y).or_default().insert(x);
        }
    }
    g
}

/// The grudge for a partition `shape` over `n` nodes (`leader`: the current leader, if known)
/// and a sentence saying it.
pub fn grudge(
    shape: &str,
    n: usize,
    leader: Option<usize>,
    rng: &mut Rng,
) -> (BTreeMap<usize, BTreeSet<usize>>, String) {
    let order = shuffled(rng, n);
    let minority = n / 2;
    match shape {
        "isolate-one" | "isolate-leader" => {
            let one = match (shape, leader) {
                ("isolate-leader", Some(l)) => l,
                _ => order[0],
            };
            let rest: Vec<usize> = (1..=n).filter(|&i| i != one).collect();
            (cut(&[one], &rest), format!("n{one} | {}", names(&rest)))
        }
        "leader-majority" | "leader-minority" => {
            let mut order = order;
            if let Some(l) = leader {
                order.retain(|&i| i != l);
                // The minority is the first `minority` nodes: the leader goes first or last.
                if shape == "leader-minority" {
                    order.insert(0, l);
                } else {
                    order.push(l);
                }
            }
            let (a, b) = order.split_at(minority.max(1).min(n - 1));
            (cut(a, b), format!("{} | {}", names(a), names(b)))
        }
        "majorities-ring" if n >= 5 => {
            // Around a ring, each node sees itself and its nearest neighbours both ways: a
            // majority, a different one for each node, so no two nodes agree on who is in.
            let reach = (n / 2).div_ceil(2);
            let mut g: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
            for (pos, &x) in order.iter().enumerate() {
                let mut sees = BTreeSet::new();
                for d in 0..=reach {
                    sees.insert(order[(pos + d) % n]);
                    sees.insert(order[(pos + n - d) % n]);
                }
                let drops: BTreeSet<usize> = (1..=n).filter(|i| !sees.contains(i)).collect();
                if !drops.is_empty() {
                    g.insert(x, drops);
                }
            }
            (g, format!("ring {}", names(&order)))
        }
        "bridge" if n >= 3 => {
            // Two halves that do not see each other, and one node in the middle seeing both.
            let (a, rest) = order.split_at(minority);
            let (mid, b) = rest.split_at(1);
            (
                cut(a, b),
                format!("{} | {} | {}", names(a), names(mid), names(b)),
            )
        }
        _ => {
            let (a, b) = order.split_at(minority.max(1).min(n - 1));
            (cut(a, b), format!("{} | {}", names(a), names(b)))
        }
    }
}

/// Installs a grudge: node by node, one nft transaction each (the old table goes in the same
/// transaction, so a node never runs without its rules or with half of them).
pub fn partition(db: &Db, g: &BTreeMap<usize, BTreeSet<usize>>) -> Result<(), String> {
    for node in &db.nodes {
        let i = node.net.index;
        let drops: Vec<String> = g
            .get(&i)
            .map(|s| s.iter().map(|&j| db.node(j).net.ip.clone()).collect())
            .unwrap_or_default();
        let mut script =
            String::from("add table inet jepsen\ndelete table inet jepsen\ntable inet jepsen {\n");
        script.push_str("  chain input {\n    type filter hook input priority 0; policy accept;\n");
        if !drops.is_empty() {
            script.push_str(&format!("    ip saddr {{ {} }} drop\n", drops.join(", ")));
        }
        script.push_str(
            "  }\n  chain output {\n    type filter hook output priority 0; policy accept;\n",
        );
        if !drops.is_empty() {
            script.push_str(&format!("    ip daddr {{ {} }} drop\n", drops.join(", ")));
        }
        script.push_str("  }\n}\n");
        run_in_with_input(&node.net, "nft", &["-f", "-"], &script)?;
    }
    Ok(())
}

/// Removes every node's partition rules.
pub fn heal_partition(db: &Db) -> Result<(), String> {
    partition(db, &BTreeMap::new())
}

/// Packet faults (see [`crate::netem`]) on `nodes`: delay with jitter, loss, duplication,
/// reordering, corruption of their UDP traffic both ways.
pub fn netem(db: &Db, nodes: &[usize], rng: &mut Rng) -> Result<String, String> {
    let spec = crate::netem::Spec::random(rng);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    for &i in nodes {
        let node = db.node(i);
        let mut slot = node.netem.lock().expect("netem");
        if let Some(old) = slot.take() {
            old.heal();
        }
        let mut per_node = spec.clone();
        per_node.seed = spec.seed ^ i as u64;
        *slot = Some(crate::netem::install(&exe, &node.net, &per_node)?);
    }
    Ok(format!("{}: {}", names(nodes), spec.describe()))
}

/// Removes packet faults from `nodes`.
pub fn heal_netem(db: &Db, nodes: &[usize]) {
    for &i in nodes {
        if let Some(installed) = db.node(i).netem.lock().expect("netem").take() {
            installed.heal();
        }
    }
}

/// Skews the clocks of node `i` through its test hook.
pub fn set_clock(db: &Db, i: usize, offset_ms: i64, rate: f64) -> Result<(), String> {
    let body = json!({"offset_ms": offset_ms, "rate": rate});
    call(
        &db.node(i).socket(),
        "POST",
        "/v1/test/clock",
        Some(&body),
        Duration::from_secs(5),
    )
    .map(|_| ())
    .map_err(|e| e.message().to_string())
}

/// kill -9.
pub fn kill(db: &Db, i: usize) {
    let node = db.node(i);
    if let Some(mut a) = node.agent.lock().expect("agent").take() {
        a.kill();
    }
    *node.paused.lock().expect("paused") = false;
}

/// Starts node `i`'s agent again on its data (no-op if it runs).
pub fn restart(db: &Db, i: usize) -> Result<(), String> {
    let node = db.node(i);
    let mut slot = node.agent.lock().expect("agent");
    if slot.is_none() {
        *slot = Some(Agent::start(&db.shoal, &node.net, &node.dir, &node.log)?);
    }
    Ok(())
}

/// SIGSTOP (`pause`) or SIGCONT.
pub fn pause(db: &Db, i: usize, stop: bool) -> Result<(), String> {
    let node = db.node(i);
    let agent = node.agent.lock().expect("agent");
    let mut paused = node.paused.lock().expect("paused");
    if let Some(a) = agent.as_ref() {
        a.signal(if stop { "STOP" } else { "CONT" })?;
        *paused = stop;
    }
    Ok(())
}

/// How long after a leader was killed a write through another manager committed: probes a
/// label write every 50 ms, each with a short timeout, for up to `within`.
pub fn failover_probe(db: &Db, killed: usize, at: Instant, within: Duration) -> Option<Duration> {
    let mut k = 0u64;
    while at.elapsed() < within {
        let survivors: Vec<usize> = (1..=db.nodes.len())
            .filter(|&i| i != killed && db.up(i))
            .collect();
        for &i in &survivors {
            k += 1;
            let body = json!({"label_add": [format!("failover={k}")]});
            let path = format!("/v1/nodes/n{i}/update");
            if let Ok(Response::Ok { .. }) = call(
                &db.node(i).socket(),
                "POST",
                &path,
                Some(&body),
                Duration::from_secs(2),
            ) {
                return Some(at.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One membership change that keeps the cluster safe, picked by `rng`: promote a worker,
/// demote a manager (never below three, never one that would cost the quorum: the agent
/// refuses those, and we do not ask unless every manager is up), or remove a worker and join a
/// fresh node in its place. Returns what it did.
pub fn churn(db: &Db, rng: &mut Rng, protected: &BTreeSet<usize>) -> Result<String, String> {
    let managers = db.managers().ok_or("no manager answered the node list")?;
    let n = db.nodes.len();
    let workers: Vec<usize> = (1..=n).filter(|i| !managers.contains(i)).collect();
    let all_up = (1..=n).all(|i| db.up(i));
    if !all_up {
        return Ok("skipped: a node is down".into());
    }
    let choice = rng.below(3);
    let ask = |i: usize, what: &str| -> Result<String, String> {
        let path = format!("/v1/nodes/n{i}/{what}");
        let leader = db.leader().ok_or("no leader")?;
        call(&db.node(leader).socket(), "POST", &path, None, OP_TIMEOUT)
            .map(|_| format!("{what} n{i}"))
            .map_err(|e| format!("{what} n{i}: {}", e.message()))
    };
    match choice {
        0 if !workers.is_empty() && managers.len() < 5 => {
            let w = workers[rng.below(workers.len() as u64) as usize];
            ask(w, "promote")
        }
        1 if managers.len() > 3 => {
            let m = managers[rng.below(managers.len() as u64) as usize];
            ask(m, "demote")
        }
        _ => {
            let candidates: Vec<usize> = workers
                .iter()
                .copied()
                .filter(|w| !protected.contains(w))
                .collect();
            if candidates.is_empty() {
                return Ok("skipped: no worker to replace".into());
            }
            let w = candidates[rng.below(candidates.len() as u64) as usize];
            replace(db, w)
        }
    }
}

/// Removes worker `i` (its agent killed, `node rm --force`), wipes its data, and joins a fresh
/// agent in its place.
pub fn replace(db: &Db, i: usize) -> Result<String, String> {
    let leader = db.leader().ok_or("no leader")?;
    let old = db.node(i).id.lock().expect("id").clone();
    kill(db, i);
    let path = format!("/v1/nodes/{old}?force=true");
    call(&db.node(leader).socket(), "DELETE", &path, None, OP_TIMEOUT)
        .map_err(|e| format!("node rm n{i}: {}", e.message()))?;
    let node = db.node(i);
    // The machine is wiped: its task processes (which outlive a killed agent, to be adopted
    // by the next) go too, as its data does.
    wipe_processes(&node.net);
    let _ = std::fs::remove_dir_all(&node.dir);
    restart(db, i)?;
    let token = match call(
        &db.node(leader).socket(),
        "GET",
        "/v1/swarm/join-token/worker",
        None,
        OP_TIMEOUT,
    ) {
        Ok(Response::Token { token, .. }) => token,
        other => return Err(format!("join token: {other:?}")),
    };
    let body = json!({"token": token, "remote_addr": format!("{}:4700", db.node(leader).net.ip)});
    call(
        &node.socket(),
        "POST",
        "/v1/swarm/join",
        Some(&body),
        Duration::from_secs(60),
    )
    .map_err(|e| format!("join n{i}: {}", e.message()))?;
    if let Some(info) = db.info(i) {
        *node.id.lock().expect("id") = info.node_id;
    }
    Ok(format!("replaced worker n{i} (was {old})"))
}

/// kill -9 every process in a node's network namespace.
pub fn wipe_processes(net: &crate::testbed::NodeNet) {
    let Ok(out) = std::process::Command::new("ip")
        .args(["netns", "pids", &net.netns])
        .output()
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .output();
    }
}
