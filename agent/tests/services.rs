//! Services on real agents and real processes: create, spread, kill a task, kill a node,
//! scale, update, remove; and an agent restarted under running tasks re-adopts them.

mod common;

use common::{running_task_pids, serial, Cluster};
use serde_json::Value;

/// `service ps SERVICE` rows as (name, node, desired, current state) of the current tasks.
fn ps(c: &Cluster, i: usize, service: &str) -> Option<Vec<(String, String, String, String)>> {
    let out = c.shoal(i, &["service", "ps", "--no-trunc", service]);
    if out.code != 0 {
        return None;
    }
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
        ));
    }
    Some(rows)
}

fn running_on(c: &Cluster, i: usize, service: &str) -> Option<Vec<String>> {
    let rows = ps(c, i, service)?;
    Some(
        rows.into_iter()
            .filter(|r| r.2 == "Running" && r.3.starts_with("Running"))
            .map(|r| r.1)
            .collect(),
    )
}

fn inspect(c: &Cluster, i: usize, service: &str) -> Value {
    let out = c.shoal(i, &["service", "inspect", service]).ok();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

#[test]
fn services_run_spread_restart_move_scale_update_and_go() {
    let _g = serial();
    let mut c = Cluster::start(4);
    c.form(3);
    // Bad input: one line, nothing created.
    let err = c
        .shoal(
            0,
            &[
                "service",
                "create",
                "--name",
                "x",
                "--limit-memory",
                "lots",
                "sleep",
            ],
        )
        .err();
    assert!(err.contains("--limit-memory"), "{err}");
    let err = c
        .shoal(
            0,
            &["service", "create", "--name", "bad name!", "sleep", "1"],
        )
        .err();
    assert!(err.starts_with("Error: "), "{err}");
    assert_eq!(c.shoal(0, &["service", "ls", "-q"]).ok(), "");

    let id = c
        .shoal(
            0,
            &[
                "service",
                "create",
                "-d",
                "--name",
                "web",
                "--replicas",
                "8",
                "--runtime",
                "process",
                "sleep",
                "1000",
            ],
        )
        .ok();
    assert_eq!(id.trim().len(), 16, "{id}");
    let nodes = c.wait("8 tasks running on 4 nodes", || {
        let on = running_on(&c, 0, "web")?;
        (on.len() == 8).then_some(on)
    });
    let mut per_node = std::collections::BTreeMap::new();
    for n in &nodes {
        *per_node.entry(n.clone()).or_insert(0) += 1;
    }
    assert_eq!(per_node.len(), 4, "spread: {per_node:?}");
    assert!(per_node.values().all(|c| *c == 2), "{per_node:?}");
    let ls = c.shoal(1, &["service", "ls"]).ok();
    assert!(ls.contains("web") && ls.contains("8/8"), "{ls}");
    // Real processes: 2 per node.
    for n in &c.nodes {
        assert_eq!(running_task_pids(&n.dir).len(), 2, "{}", n.name);
    }

    // A task killed from outside is restarted (after the 5 s delay), in its slot.
    let victim = running_task_pids(&c.nodes[3].dir)[0];
    let _ = std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status();
    c.wait("a failed task in the history", || {
        let out = c.shoal(0, &["service", "ps", "web"]).ok();
        (out.contains("\\_ web.") && out.contains("Failed")).then_some(())
    });
    c.wait("8 running again", || {
        (running_on(&c, 0, "web")?.len() == 8).then_some(())
    });

    // A worker dies: its tasks run elsewhere.
    c.kill(3);
    common::kill_tasks(&c.nodes[3].dir);
    c.wait("8 running on the 3 others", || {
        let on = running_on(&c, 0, "web")?;
        (on.len() == 8 && !on.contains(&"node-4".to_string())).then_some(())
    });

    // Scale and update through the CLI, detached and waiting.
    let out = c.shoal(0, &["service", "scale", "web=3"]).ok();
    assert!(out.contains("web scaled to 3"), "{out}");
    assert!(out.contains("verify: Service web converged"), "{out}");
    assert_eq!(running_on(&c, 0, "web").unwrap().len(), 3);
    let v = inspect(&c, 0, "web");
    assert_eq!(v["spec"]["mode"]["Replicated"]["replicas"], 3);
    c.shoal(0, &["service", "update", "--env-add", "COLOR=blue", "web"])
        .ok();
    let v = inspect(&c, 0, "web");
    assert_eq!(v["spec"]["task"]["env"][0], "COLOR=blue");
    assert_eq!(running_on(&c, 0, "web").unwrap().len(), 3);

    // Removed: every process of the service stops.
    c.shoal(0, &["service", "rm", "web"]).ok();
    c.wait("no task process left", || {
        (0..3)
            .all(|i| running_task_pids(&c.nodes[i].dir).is_empty())
            .then_some(())
    });
    assert_eq!(c.shoal(0, &["service", "ls", "-q"]).ok(), "");
}

#[test]
fn tasks_survive_agent_restarts_logs_are_gathered_and_a_returning_node_stops_replaced_tasks() {
    let _g = serial();
    let mut c = Cluster::start(3);
    c.form(1);
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "g",
            "--mode",
            "global",
            "--runtime",
            "process",
            "sleep",
            "1000",
        ],
    )
    .ok();
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "3",
            "--replicas-max-per-node",
            "1",
            "--runtime",
            "process",
            "sh",
            "-c",
            "echo started $SHOAL_TASK_SLOT; sleep 1000",
        ],
    )
    .ok();
    c.wait("3 global and 3 web tasks running", || {
        let g = running_on(&c, 0, "g")?;
        let w = running_on(&c, 0, "web")?;
        (g.len() == 3 && w.len() == 3).then_some(())
    });
    for n in &c.nodes {
        assert_eq!(running_task_pids(&n.dir).len(), 2, "{}", n.name);
    }

    // An agent restarted under its running tasks adopts them: same processes, no duplicates.
    let mut before = running_task_pids(&c.nodes[1].dir);
    before.sort();
    c.kill(1);
    c.spawn(1);
    c.wait("node-2 Ready again", || {
        let ls = c.ls(0)?;
        ls.iter().all(|n| n["Status"] == "Ready").then_some(())
    });
    c.wait("everything running after the restart", || {
        let g = running_on(&c, 0, "g")?;
        let w = running_on(&c, 0, "web")?;
        (g.len() == 3 && w.len() == 3).then_some(())
    });
    let mut after = running_task_pids(&c.nodes[1].dir);
    after.sort();
    assert_eq!(before, after, "the same task processes, none started twice");

    // Logs gathered from every node, prefixed by task and node.
    let logs = c.shoal(0, &["service", "logs", "web"]).ok();
    for slot in 1..=3 {
        assert!(
            logs.lines().any(|l| l.starts_with(&format!("web.{slot}."))
                && l.ends_with(&format!("| started {slot}"))),
            "{logs}"
        );
    }
    let nps = c.shoal(0, &["node", "ps", "node-2"]).ok();
    assert!(nps.contains("g.") && nps.contains("web."), "{nps}");

    // node-3's agent dies (its processes go on, as on a partitioned machine): web moves, and the
    // logs say what is missing instead of failing.
    let on3 = ps_node(&c, "node-3");
    c.kill(2);
    c.wait(
        "node-3's web task replaced (pending: one task per node)",
        || {
            let out = c.shoal(0, &["service", "ps", "web"]).ok();
            let replaced = out
                .lines()
                .any(|l| l.contains("\\_ web.") && l.contains("node-3") && l.contains("Shutdown"));
            let pending = out.lines().any(|l| l.contains("Pending"));
            (replaced && pending).then_some(())
        },
    );
    let out = c.shoal(0, &["service", "ps", "--no-trunc", "web"]).ok();
    assert!(out.contains("max replicas per node"), "{out}");
    let out = c.shoal(0, &["service", "logs", "web"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("node-3"), "{}", out.stderr);
    // node-3 returns: the web task it ran was replaced, so it stops; its global task stays.
    c.spawn(2);
    c.wait(
        "node-3's replaced task stopped, its global task running",
        || {
            let pids = running_task_pids(&c.nodes[2].dir);
            let g = running_on(&c, 0, "g")?;
            (pids.len() == 1 && g.len() == 3).then_some(())
        },
    );
    assert!(on3 >= 1);
    assert_eq!(
        c.shoal(0, &["swarm", "update", "--task-history-limit", "2"])
            .ok()
            .trim(),
        "Swarm updated."
    );
    let err = c
        .shoal(0, &["swarm", "update", "--task-history-limit", "5000"])
        .err();
    assert!(err.contains("task history limit"), "{err}");
}

/// How many current tasks `node ps` shows on a node.
fn ps_node(c: &Cluster, node: &str) -> usize {
    let out = c.shoal(0, &["node", "ps", node]).ok();
    out.lines().skip(1).filter(|l| !l.contains("\\_")).count()
}

/// `service create` follows a service until it converges; one whose restart policy gives up on
/// a task (no more attempts, or a condition that does not restart) never will, and the command
/// says so and fails instead of waiting forever.
#[test]
fn a_service_whose_restart_policy_gives_up_is_an_error_not_a_wait() {
    let _g = serial();
    let c = Cluster::start(1);
    c.form(1);
    let out = c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "crashy",
            "--runtime",
            "process",
            "--restart-condition",
            "on-failure",
            "--restart-max-attempts",
            "1",
            "--restart-delay",
            "100ms",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("1 of 1 tasks ended and the restart policy does not restart it (slot 1 failed: task: non-zero exit (3))"),
        "{}",
        out.stderr
    );
    // A task that completes under `--restart-condition none` is not waited for either.
    let out = c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "once",
            "--replicas",
            "2",
            "--runtime",
            "process",
            "--restart-condition",
            "none",
            "true",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains(" of 2 tasks ended") && out.stderr.contains("complete"),
        "{}",
        out.stderr
    );
    // The services exist: the error is about convergence, not creation.
    let ls = c.shoal(0, &["service", "ls"]).ok();
    assert!(ls.contains("crashy") && ls.contains("once"), "{ls}");
}

#[test]
fn a_process_task_is_told_its_host_mode_ports() {
    let _g = serial();
    let c = Cluster::start(1);
    c.form(1);
    let port = common::free_tcp_port_number();
    c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "told",
            "--runtime",
            "process",
            "-p",
            &format!("published={port},target=80,mode=host"),
            "-p",
            &format!("published={},target=53,protocol=udp,mode=host", port + 1),
            "sh",
            "-c",
            "echo \"port=$PORT http=$SHOAL_PORT_80 dns=$SHOAL_PORT_53\"; exec sleep 100000",
        ],
    )
    .ok();
    let want = format!("port={port} http={port} dns={}", port + 1);
    c.wait("the task to print the ports it was told", || {
        let logs = c.shoal(0, &["service", "logs", "told"]).stdout;
        logs.contains(&want).then_some(())
    });
    let ps = c.shoal(0, &["service", "ps", "told"]).ok();
    assert!(
        ps.contains(&format!("*:{port}->80/tcp,*:{}->53/udp", port + 1)),
        "{ps}"
    );
}
