//! End-to-end: real agents on loopback, driven through the `shoal` CLI.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{serial, Cluster};

fn node<'a>(ls: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    ls.iter().find(|n| n["Hostname"] == name)
}

#[test]
fn a_five_node_cluster_through_promotion_demotion_failover_and_restart() {
    let _g = serial();
    let mut c = Cluster::start(5);
    // init + 4 joins (2 with the manager token, 2 with the worker token)
    c.form(3);

    // `node ls`: docker's columns, `*` on the node asked, sorted by hostname.
    let table = c.shoal(0, &["node", "ls"]).ok();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 6, "{table}");
    let header: Vec<&str> = lines[0]
        .split("   ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "ENGINE VERSION"
        ]
    );
    for (i, line) in lines[1..].iter().enumerate() {
        assert!(
            line.contains(&format!("node-{}", i + 1)),
            "row order: {table}"
        );
        assert!(line.contains("Ready") && line.contains("Active"), "{line}");
        assert_eq!(line.contains(" * "), i == 0, "self marker: {line}");
    }
    assert!(lines[1].contains("Leader"), "{table}");
    assert!(
        lines[2].contains("Reachable") && lines[3].contains("Reachable"),
        "{table}"
    );
    let ids = c.shoal(2, &["node", "ls", "-q"]).ok();
    assert_eq!(ids.lines().count(), 5);
    assert!(ids
        .lines()
        .all(|l| l.len() == 16 && l.chars().all(|c| c.is_ascii_hexdigit())));
    // A worker holds no cluster state and may not ask a manager for it.
    let from_worker = c.shoal(4, &["node", "ls"]).err();
    assert!(
        from_worker.contains("this node is not a swarm manager"),
        "{from_worker}"
    );

    // Metrics: the leader reports Raft, the cluster state and SWIM; a worker has no replica.
    let scrape = |i: usize| {
        let socket = c.nodes[i].dir.join(shoal_agent::cli::SOCKET_NAME);
        let r = shoal_agent::client::exchange(&socket, "GET", "/metrics", None).expect("scrape");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("utf-8")
    };
    let has = |text: &str, line: &str| text.lines().any(|l| l == line);
    let leader_metrics = c.wait("the leader's metrics see 5 ready nodes", || {
        let text = scrape(0);
        (has(&text, "shoal_nodes{role=\"manager\",status=\"ready\"} 3")
            && has(&text, "shoal_nodes{role=\"worker\",status=\"ready\"} 2")
            && has(&text, "shoal_swim_members{state=\"alive\"} 5"))
        .then_some(text)
    });
    for line in [
        "shoal_swarm_active 1",
        "shoal_raft_is_leader 1",
        "shoal_raft_voters 3",
        "# TYPE shoal_raft_replication_lag_entries gauge",
    ] {
        assert!(has(&leader_metrics, line), "{line:?} in:\n{leader_metrics}");
    }
    assert_eq!(
        leader_metrics
            .lines()
            .filter(|l| l.starts_with("shoal_raft_replication_lag_entries{"))
            .count(),
        2,
        "one lag per follower: {leader_metrics}"
    );
    let term: u64 = leader_metrics
        .lines()
        .find_map(|l| l.strip_prefix("shoal_raft_term "))
        .and_then(|v| v.parse().ok())
        .expect("a term");
    assert!(term >= 1);
    // The same over TCP (--metrics-addr), which serves nothing else.
    let (status, tcp) = common::http_get(&c.nodes[0].metrics, "/metrics");
    assert_eq!(status, 200);
    assert!(has(&tcp, "shoal_raft_is_leader 1"), "{tcp}");
    assert_eq!(common::http_get(&c.nodes[0].metrics, "/v1/nodes").0, 404);
    let worker_metrics = scrape(4);
    assert!(has(&worker_metrics, "shoal_swarm_active 1"));
    assert!(worker_metrics.contains("role=\"worker\""));
    assert!(!worker_metrics.contains("shoal_raft_"), "{worker_metrics}");
    assert!(worker_metrics.contains("shoal_swim_probes_total "));

    // Promote the two workers: 5 voters.
    let out = c.shoal(1, &["node", "promote", "node-4", "node-5"]).ok();
    assert_eq!(
        out,
        "Node node-4 promoted to a manager in the swarm.\nNode node-5 promoted to a manager in the swarm.\n"
    );
    c.wait("5 voters", || {
        let ls = c.ls(0)?;
        let voters = ls
            .iter()
            .filter(|n| n["ManagerStatus"] == "Leader" || n["ManagerStatus"] == "Reachable")
            .count();
        (voters == 5).then_some(())
    });
    c.wait("node-4 and node-5 with the observed role manager", || {
        let n4 = c.inspect(0, "node-4")?;
        let n5 = c.inspect(0, "node-5")?;
        (n4["role"] == "manager" && n5["role"] == "manager").then_some(())
    });
    let again = c.shoal(0, &["node", "promote", "node-4"]).ok();
    assert_eq!(again, "Node node-4 is already a manager.\n");

    // Updates made before the crash below must survive it.
    c.shoal(2, &["node", "update", "--label-add", "zone=eu-1", "node-2"])
        .ok();
    c.shoal(3, &["node", "update", "--availability", "pause", "node-3"])
        .ok();

    // Demote the leader: leadership moves first, the cluster keeps a leader except for that
    // one hand-over.
    let old = c.leader(0).expect("a leader");
    assert_eq!(old, "node-1");
    let watching = Arc::new(AtomicBool::new(true));
    let seen = {
        let watching = watching.clone();
        let dir = c.nodes[1].dir.clone();
        std::thread::spawn(move || {
            let mut leaders: Vec<String> = Vec::new();
            while watching.load(Ordering::Relaxed) {
                let out = std::process::Command::new(common::SHOAL)
                    .arg("--data-dir")
                    .arg(&dir)
                    .args(["info", "--format", "json"])
                    .output()
                    .expect("info");
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                if let Some(l) = v["leader"].as_str() {
                    if !l.is_empty() && leaders.last().map(String::as_str) != Some(l) {
                        leaders.push(l.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            leaders
        })
    };
    let out = c.shoal(2, &["node", "demote", "node-1"]).ok();
    assert_eq!(out, "Manager node-1 demoted in the swarm.\n");
    c.wait("node-1 a worker and another leader", || {
        let ls = c.ls(1)?;
        let n1 = node(&ls, "node-1")?;
        let leader = ls.iter().find(|n| n["ManagerStatus"] == "Leader")?;
        (n1["ManagerStatus"] == "" && leader["Hostname"] != "node-1").then_some(())
    });
    c.wait("node-1's observed role worker", || {
        (c.inspect(1, "node-1")?["role"] == "worker").then_some(())
    });
    c.wait(
        "node-1 presenting a worker certificate after its demotion",
        || {
            let pem = std::fs::read_to_string(c.nodes[0].dir.join("cert.pem")).ok()?;
            let cert = shoal_transport::pki::NodeCertificate::from_pem(&pem).ok()?;
            (cert.role == shoal_transport::pki::Role::Worker).then_some(())
        },
    );
    watching.store(false, Ordering::Relaxed);
    let leaders = seen.join().expect("watcher");
    assert!(
        leaders.len() <= 2,
        "one hand-over, no flapping: leaders seen in order {leaders:?}"
    );

    // kill -9 the leader: a new one is elected; the old shows Down and Unreachable.
    let leader = c.leader(1).expect("a leader");
    let li = c.index(&leader);
    let asker = [1, 2, 3, 4]
        .into_iter()
        .find(|&i| i != li)
        .expect("another manager");
    c.kill(li);
    c.wait("a new leader", || {
        let l = c.leader(asker)?;
        (l != leader).then_some(())
    });
    c.wait("the killed leader Down and Unreachable", || {
        let ls = c.ls(asker)?;
        let n = node(&ls, &leader)?;
        (n["Status"] == "Down" && n["ManagerStatus"] == "Unreachable").then_some(())
    });

    // Restart it: Ready and Reachable again, nothing lost.
    c.spawn(li);
    c.wait("the restarted manager Ready and Reachable", || {
        let ls = c.ls(asker)?;
        let n = node(&ls, &leader)?;
        (n["Status"] == "Ready" && n["ManagerStatus"] == "Reachable").then_some(())
    });
    for i in [li, asker] {
        let n2 = c.inspect(i, "node-2").expect("inspect node-2");
        assert_eq!(
            n2["labels"]["zone"], "eu-1",
            "label kept, asked on node {i}"
        );
        let n3 = c.inspect(i, "node-3").expect("inspect node-3");
        assert_eq!(
            n3["availability"], "Pause",
            "availability kept, asked on node {i}"
        );
    }

    // A node promoted from worker gets a manager certificate, so new nodes can join through it.
    let n4 = c.index("node-4");
    c.wait("node-4 presenting a manager certificate", || {
        let pem = std::fs::read_to_string(c.nodes[n4].dir.join("cert.pem")).ok()?;
        let cert = shoal_transport::pki::NodeCertificate::from_pem(&pem).ok()?;
        (cert.role == shoal_transport::pki::Role::Manager).then_some(())
    });
    let token = c
        .shoal(asker, &["swarm", "join-token", "-q", "worker"])
        .ok();
    let n6 = c.add();
    let via = c.nodes[n4].listen.clone();
    let out = c
        .shoal(n6, &["swarm", "join", "--token", token.trim(), &via])
        .ok();
    assert_eq!(out.trim(), "This node joined a swarm as a worker.");
    c.wait("node-6 Ready", || {
        (node(&c.ls(asker)?, "node-6")?["Status"] == "Ready").then_some(())
    });

    // rm: refused for a manager, and for a Ready node without --force.
    let e = c.shoal(asker, &["node", "rm", "node-2"]).err();
    assert!(
        e.contains("is a cluster manager and is a member of the raft cluster"),
        "{e}"
    );
    let e = c.shoal(asker, &["node", "rm", "node-1"]).err();
    assert!(e.contains("is not down and can't be removed"), "{e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    c.shoal(asker, &["node", "rm", "--force", "node-1"]).ok();
    c.wait("node-1 gone", || {
        let ls = c.ls(asker)?;
        (ls.len() == 5 && node(&ls, "node-1").is_none()).then_some(())
    });
}

#[test]
fn quorum_loss_is_explained_and_force_new_cluster_restores_service() {
    let _g = serial();
    let mut c = Cluster::start(3);
    c.form(3);
    c.shoal(0, &["node", "update", "--label-add", "keep=yes", "node-2"])
        .ok();
    let wtoken = c.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();

    // One of three managers down: demoting another would leave 1 of 2 reachable.
    c.kill(2);
    c.wait("node-3 Down and Unreachable", || {
        let ls = c.ls(0)?;
        let n = node(&ls, "node-3")?;
        (n["Status"] == "Down" && n["ManagerStatus"] == "Unreachable").then_some(())
    });
    let e = c.shoal(0, &["node", "demote", "node-2"]).err();
    assert_eq!(
        e.trim(),
        "Error: demoting node ".to_string()
            + c.inspect(0, "node-2").expect("node-2")["id"].as_str().expect("id")
            + " would result in a loss of quorum: 1 of the 2 remaining managers reachable, 2 needed"
    );

    // Two of three down: no leader, and the answer says why at once.
    c.kill(1);
    let msg = c.wait("the no-leader message", || {
        let out = c.shoal(0, &["node", "ls"]);
        (out.code != 0 && out.stderr.contains("no leader")).then_some(out.stderr)
    });
    c.wait("the exact count", || {
        let out = c.shoal(0, &["node", "ls"]);
        (out.stderr.trim() == "Error: no leader: 1 of 3 managers reachable, 2 needed").then_some(())
    });
    assert_eq!(msg.lines().count(), 1, "{msg}");
    // A manager in a minority admits nobody: the join cannot be recorded, so no certificate
    // is issued and no half-joined node is left behind.
    let joiner = c.add();
    let addr = c.nodes[0].listen.clone();
    let e = c
        .shoal(joiner, &["swarm", "join", "--token", wtoken.trim(), &addr])
        .err();
    assert!(e.contains("could not record this node"), "{e}");
    assert!(!c.nodes[joiner].dir.join("cert.pem").exists());

    // The survivor restarts the cluster alone, with the committed state.
    let out = c.shoal(0, &["swarm", "init", "--force-new-cluster"]).ok();
    assert!(out.starts_with("Swarm initialized"), "{out}");
    let ls = c.wait("service restored", || c.ls(0));
    assert_eq!(ls.len(), 3);
    assert_eq!(
        node(&ls, "node-1").expect("node-1")["ManagerStatus"],
        "Leader"
    );
    let n2 = c.inspect(0, "node-2").expect("node-2");
    assert_eq!(n2["labels"]["keep"], "yes", "committed state kept");
    assert_eq!(n2["role"], "worker", "the lost managers are workers now");
    c.shoal(0, &["node", "update", "--label-add", "after=1", "node-1"])
        .ok();
}

#[test]
fn join_tokens_are_checked() {
    let _g = serial();
    let c = Cluster::start(3);
    c.shoal(0, &["swarm", "init"]).ok();
    let addr = c.nodes[0].listen.clone();
    let worker = c.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();
    let worker = worker.trim();

    let e = c
        .shoal(1, &["swarm", "join", "--token", "SHOAL-1-nope", &addr])
        .err();
    assert!(e.contains("malformed join token"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");

    let mut wrong = worker.to_string();
    let last = wrong.pop().expect("a char");
    wrong.push(if last == '0' { '1' } else { '0' });
    let e = c
        .shoal(1, &["swarm", "join", "--token", &wrong, &addr])
        .err();
    assert!(e.contains("invalid join token"), "{e}");

    // A worker token gives a worker certificate, whatever the joiner wants.
    let out = c
        .shoal(1, &["swarm", "join", "--token", worker, &addr])
        .ok();
    assert_eq!(out.trim(), "This node joined a swarm as a worker.");
    let pem = std::fs::read_to_string(c.nodes[1].dir.join("cert.pem")).expect("cert");
    let cert = shoal_transport::pki::NodeCertificate::from_pem(&pem).expect("cert");
    assert_eq!(cert.role, shoal_transport::pki::Role::Worker);
    let n = c.wait("node-2 registered", || c.inspect(0, "node-2"));
    assert_eq!(n["desired_role"], "worker");

    // Rotation invalidates the old token for future joins.
    c.shoal(0, &["swarm", "join-token", "--rotate", "-q", "worker"])
        .ok();
    let e = c
        .shoal(2, &["swarm", "join", "--token", worker, &addr])
        .err();
    assert!(e.contains("invalid join token"), "{e}");
    let fresh = c.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();
    c.shoal(2, &["swarm", "join", "--token", fresh.trim(), &addr])
        .ok();

    // Joining twice is refused clearly.
    let e = c
        .shoal(2, &["swarm", "join", "--token", fresh.trim(), &addr])
        .err();
    assert!(e.contains("already part of a swarm"), "{e}");

    // A worker leaves: the others see it Down, with the reason.
    let out = c.shoal(2, &["swarm", "leave"]).ok();
    assert!(out.starts_with("Node left the swarm."), "{out}");
    c.wait("node-3 Down (left)", || {
        let n = c.inspect(0, "node-3")?;
        (n["status"] == "Down" && n["status_message"] == "node left the swarm").then_some(())
    });

    // The agent stays up (as docker's daemon does): the same agent joins again, as a new node;
    // the old entry stays Down until `node rm`.
    let info = c.shoal(2, &["info"]).ok();
    assert!(info.starts_with("Swarm: inactive\n"), "{info}");
    let fresh = c.shoal(0, &["swarm", "join-token", "-q", "worker"]).ok();
    let out = c
        .shoal(2, &["swarm", "join", "--token", fresh.trim(), &addr])
        .ok();
    assert_eq!(out.trim(), "This node joined a swarm as a worker.");
    c.wait("node-3 back as a new node, Ready", || {
        let ls = c.ls(0)?;
        let rows: Vec<&serde_json::Value> =
            ls.iter().filter(|n| n["Hostname"] == "node-3").collect();
        (rows.len() == 2
            && rows.iter().any(|n| n["Status"] == "Down")
            && rows.iter().any(|n| n["Status"] == "Ready"))
        .then_some(())
    });

    // The only manager may not leave without --force; with it, it leaves and the same agent
    // can start a new swarm.
    let e = c.shoal(0, &["swarm", "leave"]).err();
    assert!(e.contains("last manager"), "{e}");
    let out = c.shoal(0, &["swarm", "leave", "--force"]).ok();
    assert!(out.starts_with("Node left the swarm."), "{out}");
    let out = c.shoal(0, &["swarm", "init"]).ok();
    assert!(out.starts_with("Swarm initialized"), "{out}");
    let ls = c.wait("a new one-node swarm", || {
        let ls = c.ls(0)?;
        (ls.len() == 1 && ls[0]["ManagerStatus"] == "Leader").then_some(ls)
    });
    assert_eq!(ls[0]["Hostname"], "node-1");
}

#[test]
fn a_manager_may_not_leave_if_that_loses_quorum() {
    let _g = serial();
    let mut c = Cluster::start(3);
    c.form(3);
    c.kill(2);
    c.wait("node-3 Unreachable", || {
        let ls = c.ls(0)?;
        (node(&ls, "node-3")?["ManagerStatus"] == "Unreachable").then_some(())
    });
    let e = c.shoal(1, &["swarm", "leave"]).err();
    assert_eq!(
        e.trim(),
        "Error: leaving the swarm would result in a loss of quorum: 1 of the 2 remaining managers reachable, 2 needed (use --force to leave anyway)"
    );
    // Still a manager, still serving.
    let ls = c.ls(1).expect("ls");
    assert_eq!(
        node(&ls, "node-2").expect("node-2")["ManagerStatus"],
        "Reachable"
    );
}

const NOT_A_MANAGER: &str = "Error: this node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";

#[test]
fn workers_cannot_manage_and_removed_nodes_stay_out_past_restarts_and_snapshots() {
    let _g = serial();
    // Snapshots every 20 entries, so that the restarts below start from one.
    let mut c = Cluster::start_with_env(4, &[("SHOAL_SNAPSHOT_EVERY", "20")]);
    c.form(3);
    let worker = c.index("node-4");
    for args in [
        &["swarm", "join-token", "manager"][..],
        &["swarm", "join-token", "--rotate", "worker"],
        &["node", "promote", "node-4"],
        &["node", "demote", "node-1"],
        &["node", "ls"],
        &["node", "inspect", "node-1"],
        &["node", "rm", "--force", "node-1"],
        &["node", "update", "--availability", "drain", "node-1"],
    ] {
        let err = c.shoal(worker, args).err();
        assert_eq!(err.trim(), NOT_A_MANAGER, "{args:?}");
    }
    // `info` is local: it still works on a worker.
    let info = c.shoal(worker, &["info"]).ok();
    assert!(info.contains("Is Manager: false"), "{info}");

    // Remove the worker (stopped first, as an operator would).
    c.kill(worker);
    c.wait("node-4 Down", || {
        let ls = c.ls(0)?;
        node(&ls, "node-4")
            .is_some_and(|n| n["Status"] == "Down")
            .then_some(())
    });
    c.shoal(0, &["node", "rm", "node-4"]).ok();
    // Enough writes for a snapshot on every manager, then restart them all.
    for i in 0..30 {
        c.shoal(
            0,
            &[
                "node",
                "update",
                "--label-add",
                &format!("round={i}"),
                "node-2",
            ],
        )
        .ok();
    }
    for i in 0..3 {
        c.kill(i);
        c.spawn(i);
    }
    c.wait("a leader after the managers restarted", || c.leader(0));
    // The removed node comes back: it is told, and stays out.
    c.spawn(worker);
    let log = c.tmp.path().join("node-4.log");
    c.wait("the removed node to be told", || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("this node was removed from the swarm")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    let ls = c.ls(0).expect("node ls");
    assert!(node(&ls, "node-4").is_none(), "{ls:?}");
    assert_eq!(ls.len(), 3);
}
