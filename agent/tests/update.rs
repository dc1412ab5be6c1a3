//! Rolling updates on real agents and real processes, through the CLI as an operator runs them:
//! a good update with parallelism 2, a start-first update that never lowers the number of
//! running processes (counted every 100 ms), a failing update rolled back, a health check that
//! never passes pausing the update with a message, a manual rollback, and an update that goes
//! on after its leader's agent dies.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{running_task_pids, serial, Cluster};
use serde_json::Value;

fn inspect(c: &Cluster, service: &str) -> Value {
    let out = c.shoal(0, &["service", "inspect", service]).ok();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// The programs and arguments of the current, running tasks (`service ps` IMAGE is the program;
/// the arguments come from the spec each task runs, checked through the process command lines).
fn running_rows(c: &Cluster, service: &str) -> Vec<String> {
    let out = c.shoal(0, &["service", "ps", service]).ok();
    out.lines()
        .skip(1)
        .filter(|l| !l.contains("\\_"))
        .filter(|l| l.contains(" Running "))
        .map(str::to_string)
        .collect()
}

#[test]
fn updates_roll_out_pause_and_roll_back_on_real_processes() {
    let _g = serial();
    let mut c = Cluster::start(3);
    c.form(3);
    c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "--runtime",
            "process",
            "--restart-delay",
            "0s",
            "--stop-grace-period",
            "1s",
            "--update-monitor",
            "1s",
            "sleep",
            "1000",
        ],
    )
    .ok();
    c.wait("4 processes", || (c.processes() == 4).then_some(()));

    // A good update, two slots at a time: converges, completed, every process the new one.
    let out = c
        .shoal(
            0,
            &[
                "service",
                "update",
                "--update-parallelism",
                "2",
                "--args",
                "2000",
                "web",
            ],
        )
        .ok();
    assert!(out.contains("verify: Service web converged"), "{out}");
    let v = inspect(&c, "web");
    assert_eq!(v["update_status"]["state"], "completed", "{v}");
    assert_eq!(v["update_status"]["message"], "update completed");
    c.wait("4 new processes", || {
        (c.command_lines() == vec!["sleep 2000"; 4]).then_some(())
    });
    assert_eq!(running_rows(&c, "web").len(), 4);

    // Start-first: the number of running processes never drops below 4 while it rolls.
    let low = Arc::new(AtomicUsize::new(usize::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let dirs: Vec<_> = c.nodes.iter().map(|n| n.dir.clone()).collect();
    let counter = {
        let (low, stop) = (low.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                let n: usize = dirs.iter().map(|d| running_task_pids(d).len()).sum();
                low.fetch_min(n, Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let out = c
        .shoal(
            0,
            &[
                "service",
                "update",
                "--update-order",
                "start-first",
                "--args",
                "3000",
                "web",
            ],
        )
        .ok();
    stop.store(true, Ordering::Relaxed);
    let samples = counter.join().unwrap();
    assert!(out.contains("verify: Service web converged"), "{out}");
    assert!(samples > 5, "{samples} samples");
    assert!(
        low.load(Ordering::Relaxed) >= 4,
        "start-first ran only {} processes at one point",
        low.load(Ordering::Relaxed)
    );
    c.wait("4 processes of the new spec", || {
        (c.command_lines() == vec!["sleep 3000"; 4]).then_some(())
    });

    // A program that exits 1, with rollback as the failure action: rolled back, every task on
    // the previous spec; the CLI says so and fails.
    let out = c.shoal(
        0,
        &[
            "service",
            "update",
            "--update-failure-action",
            "rollback",
            "--update-order",
            "stop-first",
            "--image",
            "sh",
            "--args",
            "-c 'exit 1'",
            "web",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout
            .contains("rollback: update rolled back due to failure or early termination of task"),
        "{}",
        out.stdout
    );
    assert!(out.stderr.contains("rolled back"), "{}", out.stderr);
    let v = inspect(&c, "web");
    assert_eq!(v["update_status"]["state"], "rollback_completed", "{v}");
    assert_eq!(v["spec"]["task"]["image"], "sleep");
    assert_eq!(v["previous"]["task"]["image"], "sh");
    c.wait("4 processes of the previous spec", || {
        (c.command_lines() == vec!["sleep 3000"; 4]).then_some(())
    });

    // A health check that never passes: the update pauses, naming the task and why.
    let out = c.shoal(
        0,
        &[
            "service",
            "update",
            "--health-cmd",
            "exit 1",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "300ms",
            "--health-retries",
            "1000",
            "--args",
            "4000",
            "web",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("update paused due to failure or early termination of task")
            && out
                .stderr
                .contains("did not reach running (healthy) within 1.5s"),
        "{}",
        out.stderr
    );
    let v = inspect(&c, "web");
    assert_eq!(v["update_status"]["state"], "paused", "{v}");
    let ls = c.shoal(0, &["service", "ls"]).ok();
    assert!(ls.contains("(paused)"), "{ls}");
    // The stopped task says why in its own row too.
    let ps = c.shoal(0, &["service", "ps", "--no-trunc", "web"]).ok();
    assert!(
        ps.contains("update: did not reach running (healthy) within 1.5s"),
        "{ps}"
    );
    // The slots beyond the first batch (parallelism 2) still serve the old spec.
    assert!(
        c.command_lines()
            .iter()
            .filter(|l| *l == "sleep 3000")
            .count()
            >= 2,
        "{:?}",
        c.command_lines()
    );

    // A manual rollback goes back to the spec before the paused update.
    let out = c.shoal(0, &["service", "rollback", "web"]).ok();
    assert!(out.contains("verify: Service web converged"), "{out}");
    let v = inspect(&c, "web");
    assert_eq!(v["update_status"]["state"], "rollback_completed", "{v}");
    assert_eq!(v["update_status"]["message"], "rollback completed");
    c.wait("4 processes of the spec before", || {
        (c.command_lines() == vec!["sleep 3000"; 4]).then_some(())
    });
    let ps = c.shoal(0, &["service", "ps", "web"]).ok();
    assert!(!ps.contains("(starting)"), "{ps}");

    // A process health check that passes: tasks show healthy and count as running.
    c.shoal(
        0,
        &[
            "service",
            "update",
            "--health-cmd",
            "test -d /",
            "--health-interval",
            "300ms",
            "--update-parallelism",
            "0",
            "web",
        ],
    )
    .ok();
    let ps = c.shoal(0, &["service", "ps", "web"]).ok();
    assert_eq!(ps.matches("Running (healthy)").count(), 4, "{ps}");
    let ls = c.shoal(0, &["service", "ls"]).ok();
    assert!(ls.contains("4/4"), "{ls}");

    // The leader's agent dies in the middle of a slow update: the new leader goes on from the
    // replicated state, and the update completes.
    c.shoal(
        0,
        &[
            "service",
            "update",
            "-d",
            "--update-parallelism",
            "1",
            "--update-delay",
            "2s",
            "--args",
            "5000",
            "web",
        ],
    )
    .ok();
    c.wait("the first slot updated", || {
        c.command_lines()
            .iter()
            .any(|l| l == "sleep 5000")
            .then_some(())
    });
    let leader = c.wait("a leader", || c.leader(0));
    let li = c.index(&leader);
    let other = (li + 1) % 3;
    c.kill(li);
    let v = c.wait("the update completed under the new leader", || {
        let out = c.shoal(other, &["service", "inspect", "web"]);
        let v: Value = serde_json::from_str(&out.stdout).ok()?;
        (v[0]["update_status"]["state"] == "completed").then(|| v[0].clone())
    });
    assert_eq!(v["spec"]["task"]["args"][0], "5000");
    // The old leader's agent comes back: it stops what was replaced while it was away.
    c.spawn(li);
    c.wait("4 processes of the last spec", || {
        (c.command_lines() == vec!["sleep 5000"; 4]).then_some(())
    });
}
