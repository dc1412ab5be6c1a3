//! Services on real agents and real processes: create, spread, kill a task, kill a node,
//! scale, update, remove; and an agent restarted under running tasks re-adopts them.

mod common;

use common::{running_task_pids, Cluster, SERIAL};
use serde_json::Value;

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

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
