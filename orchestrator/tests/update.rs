//! Rolling updates and rollbacks with simulated time: every policy (parallelism, delay, order,
//! failure action and ratio, monitor), health checks, and the holes of Swarm's updater that
//! shoal closes (an update stalled on a task that never runs; a start-first rollback that stops
//! healthy tasks; an update lost with its leader).

mod common;

use std::collections::BTreeSet;

use common::*;
use proptest::prelude::*;
use shoal_cluster::*;

/// Simulated time between two steps.
const STEP_MS: u64 = 250;

/// A task whose arguments are `bad` exits 1 at once; one with a health check of `never` stays
/// starting; anything else runs, healthy if it has a check.
fn outcome(_: &Task, spec: &TaskSpec) -> (TaskState, Health) {
    if spec.args.first().is_some_and(|a| a == "bad") {
        return (TaskState::Failed, Health::None);
    }
    match &spec.health.test {
        HealthTest::Cmd(c) if c == "never" => (TaskState::Running, Health::Starting),
        HealthTest::Cmd(_) => (TaskState::Running, Health::Healthy),
        _ => (TaskState::Running, Health::None),
    }
}

/// A service of `replicas` on `nodes` nodes, converged, with restarts at once.
fn world(nodes: u64, replicas: u64, f: impl FnOnce(&mut ServiceSpec)) -> (World, ServiceId) {
    let mut w = World::new(nodes);
    let mut s = spec("web", replicas);
    s.task.args = vec!["v1".into()];
    s.task.restart.delay_ms = 0;
    s.update.monitor_ms = 2_000;
    s.rollback.monitor_ms = 2_000;
    f(&mut s);
    let id = w.create(s);
    w.settle(20);
    assert_eq!(w.running(id).len() as u64, replicas);
    (w, id)
}

/// One step: a pass, the agents act (a new task starts in one step and runs, or fails, in the
/// next), the invariants are checked, time moves on.
fn step(w: &mut World, f: &impl Fn(&Task, &TaskSpec) -> (TaskState, Health)) {
    w.pass();
    w.agents_health(|t, spec| {
        if t.status.state < TaskState::Starting {
            (TaskState::Starting, Health::None)
        } else {
            f(t, spec)
        }
    });
    w.check();
    w.now += STEP_MS;
}

fn status(w: &World, id: ServiceId) -> UpdateStatus {
    w.s.service(id)
        .unwrap()
        .update_status
        .clone()
        .expect("an update status")
}

/// Steps until the update is no longer in progress (at most `max` steps), calling `observe`
/// after each.
fn until_done(
    w: &mut World,
    id: ServiceId,
    max: usize,
    f: impl Fn(&Task, &TaskSpec) -> (TaskState, Health),
    mut observe: impl FnMut(&World),
) -> UpdateStatus {
    for _ in 0..max {
        step(w, &f);
        observe(w);
        let s = status(w, id);
        if !s.state.in_progress() {
            return s;
        }
    }
    panic!("still {:?} after {max} steps", status(w, id));
}

/// Live tasks of the service that count as running (running, healthy if checked).
fn ready(w: &World, id: ServiceId) -> Vec<&Task> {
    w.s.tasks_of_service(id)
        .filter(|t| t.live() && t.is_ready())
        .collect()
}

/// The arguments of the spec each ready task runs.
fn args_of(w: &World, id: ServiceId) -> Vec<String> {
    let svc = w.s.service(id).unwrap();
    let mut v: Vec<String> = ready(w, id)
        .iter()
        .map(|t| svc.spec_of(t.spec_version).unwrap().task.args.join(" "))
        .collect();
    v.sort();
    v
}

/// Slots whose live task does not count as running (a stop-first update's gap).
fn slots_down(w: &World, id: ServiceId, replicas: u64) -> usize {
    let up: BTreeSet<u64> = ready(w, id).iter().map(|t| t.slot).collect();
    (1..=replicas).filter(|s| !up.contains(s)).count()
}

#[test]
fn stop_first_replaces_at_most_parallelism_slots_at_once_and_completes_after_the_monitor() {
    for parallelism in [1u64, 2, 0] {
        let (mut w, web) = world(3, 6, |s| s.update.parallelism = parallelism);
        w.update(web, |s| s.task.args = vec!["v2".into()]);
        assert_eq!(status(&w, web).state, UpdateState::Updating);
        assert_eq!(status(&w, web).message, "update in progress");
        let mut most_down = 0;
        let done = until_done(&mut w, web, 400, outcome, |w| {
            most_down = most_down.max(slots_down(w, web, 6));
        });
        let limit = if parallelism == 0 {
            6
        } else {
            parallelism as usize
        };
        assert!(
            most_down <= limit,
            "parallelism {parallelism}: {most_down} slots down at once"
        );
        assert!(most_down >= 1, "the update replaced nothing");
        assert_eq!(done.state, UpdateState::Completed);
        assert_eq!(done.message, "update completed");
        assert_eq!(args_of(&w, web), vec!["v2"; 6]);
        // Completed only once the last new task was watched for the monitor period.
        let last_ready = ready(&w, web).iter().map(|t| t.ready_at_ms).max().unwrap();
        assert!(done.completed_at_ms >= last_ready + 2_000);
        assert!(done.failed.is_empty());
    }
}

#[test]
fn stop_first_starts_the_new_task_only_once_the_old_one_has_stopped() {
    // One slot whose old task holds something the new one needs (a host port, a volume).
    let (mut w, web) = world(1, 1, |s| s.update.order = UpdateOrder::StopFirst);
    let old = w.running(web)[0].id;
    w.update(web, |s| s.task.args = vec!["v2".into()]);
    w.pass();
    let new =
        w.s.tasks_of_service(web)
            .find(|t| t.id != old && t.wanted())
            .map(|t| t.id)
            .expect("a replacement");
    // The old task takes its time to stop (a long stop grace period): its replacement is
    // placed but not started, however long that takes, and that is no failure of the update.
    for _ in 0..30 {
        w.now += 1_000;
        w.pass();
        assert_eq!(w.s.task(old).unwrap().status.state, TaskState::Running);
        assert_eq!(w.s.task(new).unwrap().desired, TaskState::Ready);
    }
    assert_eq!(status(&w, web).state, UpdateState::Updating);
    // Once it has stopped, the new task starts and the update completes without failure.
    let done = until_done(&mut w, web, 100, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    assert!(done.failed.is_empty(), "{done:?}");
    assert_eq!(args_of(&w, web), vec!["v2"]);
    assert_eq!(w.s.task(new).unwrap().status.state, TaskState::Running);
}

#[test]
fn the_delay_spaces_a_worker_s_slots() {
    let (mut w, web) = world(2, 4, |s| s.update.delay_ms = 3_000);
    w.update(web, |s| s.task.args = vec!["v2".into()]);
    until_done(&mut w, web, 400, outcome, |_| {});
    let mut at: Vec<u64> = ready(&w, web).iter().map(|t| t.ready_at_ms).collect();
    at.sort();
    assert_eq!(at.len(), 4);
    for pair in at.windows(2) {
        assert!(
            pair[1] - pair[0] >= 3_000,
            "slots replaced too close: {at:?}"
        );
    }
}

#[test]
fn start_first_keeps_every_replica_running_throughout() {
    for parallelism in [1u64, 2, 0] {
        let (mut w, web) = world(3, 4, |s| {
            s.update.order = UpdateOrder::StartFirst;
            s.update.parallelism = parallelism;
        });
        let old: BTreeSet<TaskId> = w.running(web).iter().map(|t| t.id).collect();
        w.update(web, |s| s.task.args = vec!["v2".into()]);
        let mut fewest = usize::MAX;
        let mut most = 0;
        let done = until_done(&mut w, web, 400, outcome, |w| {
            let n = ready(w, web).len();
            fewest = fewest.min(n);
            most = most.max(n);
        });
        assert_eq!(done.state, UpdateState::Completed);
        assert!(fewest >= 4, "capacity fell to {fewest} of 4");
        assert!(most > 4, "no overlap: start-first never started first");
        assert_eq!(args_of(&w, web), vec!["v2"; 4]);
        // Every old task was told to stop once its successor ran.
        for id in old {
            assert!(w
                .s
                .task(id)
                .is_none_or(|t| t.desired >= TaskState::Shutdown));
        }
    }
}

#[test]
fn a_failing_update_pauses_and_names_the_task() {
    let (mut w, web) = world(3, 6, |s| s.update.parallelism = 2);
    w.update(web, |s| s.task.args = vec!["bad".into()]);
    let done = until_done(&mut w, web, 200, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Paused);
    let failed = done.failed[0];
    assert!(
        done.message.starts_with(&format!(
            "update paused due to failure or early termination of task {}",
            object_id_string(failed)
        )),
        "{}",
        done.message
    );
    assert!(done.message.ends_with("exit 1"), "{}", done.message);
    // Paused: no slot beyond the first batch is touched, however long we wait.
    for _ in 0..100 {
        step(&mut w, &outcome);
    }
    assert_eq!(status(&w, web).state, UpdateState::Paused);
    let v1 = args_of(&w, web).iter().filter(|a| *a == "v1").count();
    assert!(v1 >= 4, "a paused update went on: {:?}", args_of(&w, web));
    // A new `service update` resumes with the new spec.
    w.update(web, |s| s.task.args = vec!["v3".into()]);
    let done = until_done(&mut w, web, 400, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    assert_eq!(args_of(&w, web), vec!["v3"; 6]);
}

#[test]
fn a_failing_update_rolls_back_to_the_previous_spec() {
    for order in [UpdateOrder::StopFirst, UpdateOrder::StartFirst] {
        let (mut w, web) = world(3, 6, |s| {
            s.update.parallelism = 2;
            s.update.order = order;
            s.update.failure_action = FailureAction::Rollback;
            s.rollback.order = order;
        });
        let old: BTreeSet<TaskId> = w.running(web).iter().map(|t| t.id).collect();
        w.update(web, |s| s.task.args = vec!["bad".into()]);
        let mut states = Vec::new();
        let mut fewest = usize::MAX;
        let done = until_done(&mut w, web, 400, outcome, |w| {
            let s = status(w, web).state;
            if states.last() != Some(&s) {
                states.push(s);
            }
            fewest = fewest.min(ready(w, web).len());
        });
        assert_eq!(done.state, UpdateState::RollbackCompleted, "{order:?}");
        assert_eq!(done.message, "rollback completed");
        assert_eq!(
            states,
            vec![
                UpdateState::Updating,
                UpdateState::RollbackStarted,
                UpdateState::RollbackCompleted
            ]
        );
        assert_eq!(args_of(&w, web), vec!["v1"; 6]);
        let svc = w.s.service(web).unwrap();
        assert_eq!(svc.spec.task.args, vec!["v1"]);
        assert_eq!(svc.previous.as_ref().unwrap().task.args, vec!["bad"]);
        if order == UpdateOrder::StartFirst {
            // Swarm's hole: its start-first rollback replaced healthy old tasks. Here the old
            // tasks never stopped, and capacity never dipped.
            let now: BTreeSet<TaskId> = w.running(web).iter().map(|t| t.id).collect();
            assert_eq!(now, old, "healthy old tasks were replaced");
            assert!(fewest >= 6, "capacity fell to {fewest}");
        }
    }
}

#[test]
fn continue_goes_through_every_slot_despite_failures() {
    let (mut w, web) = world(2, 4, |s| {
        s.update.failure_action = FailureAction::Continue;
        s.task.restart.condition = RestartCondition::None;
    });
    w.update(web, |s| s.task.args = vec!["bad".into()]);
    let done = until_done(&mut w, web, 400, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    assert_eq!(done.failed.len(), 4);
    let svc = w.s.service(web).unwrap();
    let v2 =
        w.s.tasks_of_service(web)
            .filter(|t| t.spec_version == svc.version)
            .count();
    assert_eq!(v2, 4, "every slot was tried once");
}

#[test]
fn the_failure_ratio_tolerates_failures_up_to_the_limit() {
    // Slots 3 and 7 of 10 fail the new spec: 2/10 is within 0.2, 3/10 is not.
    for (bad_slots, expect) in [
        (vec![3u64, 7], UpdateState::Completed),
        (vec![3, 5, 7], UpdateState::Paused),
    ] {
        let (mut w, web) = world(3, 10, |s| {
            s.update.parallelism = 2;
            s.update.max_failure_ppm = 200_000;
            s.task.restart.condition = RestartCondition::None;
        });
        w.update(web, |s| s.task.args = vec!["v2".into()]);
        let bad = bad_slots.clone();
        let f = move |t: &Task, spec: &TaskSpec| {
            if spec.args == ["v2"] && bad.contains(&t.slot) {
                (TaskState::Failed, Health::None)
            } else {
                outcome(t, spec)
            }
        };
        let done = until_done(&mut w, web, 600, f, |_| {});
        assert_eq!(done.state, expect, "{bad_slots:?}: {done:?}");
        assert_eq!(done.failed.len(), expect_failed(&bad_slots, expect));
    }
}

fn expect_failed(bad: &[u64], state: UpdateState) -> usize {
    match state {
        UpdateState::Completed => bad.len(),
        _ => 3,
    }
}

#[test]
fn a_health_check_that_never_passes_fails_the_task_instead_of_stalling() {
    let (mut w, web) = world(2, 3, |s| s.task.health.start_period_ms = 1_000);
    w.update(web, |s| {
        s.task.args = vec!["v2".into()];
        s.task.health.test = HealthTest::Cmd("never".into());
        s.task.health.interval_ms = 1_000;
        s.task.health.timeout_ms = 500;
    });
    let done = until_done(&mut w, web, 200, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Paused);
    assert!(
        done.message
            .ends_with("did not reach running (healthy) within 4.5s"),
        "{}",
        done.message
    );
    // The stalled task was stopped; the old tasks of the other slots still serve.
    let stalled = w.s.task(done.failed[0]).unwrap();
    assert!(stalled.desired >= TaskState::Shutdown);
    assert_eq!(
        stalled.status.err, "update: did not reach running (healthy) within 4.5s",
        "the stopped task says why"
    );
    assert!(args_of(&w, web).iter().filter(|a| *a == "v1").count() >= 2);
}

#[test]
fn a_healthy_check_gates_running_and_counts_from_healthy() {
    let (mut w, web) = world(2, 2, |_| {});
    w.update(web, |s| {
        s.task.args = vec!["v2".into()];
        s.task.health.test = HealthTest::Cmd("ok".into());
    });
    // Healthy only from the third report on: the update waits for it.
    let done = until_done(&mut w, web, 200, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    assert!(ready(&w, web)
        .iter()
        .all(|t| t.status.health == Health::Healthy && t.ready_at_ms > 0));
}

#[test]
fn a_failure_after_the_monitor_window_is_the_restart_policy_s() {
    let (mut w, web) = world(2, 2, |_| {});
    w.update(web, |s| s.task.args = vec!["v2".into()]);
    let done = until_done(&mut w, web, 200, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    let victim = ready(&w, web)[0].id;
    let node = w.s.task(victim).unwrap().node.unwrap();
    let mut st = TaskStatus::new(TaskState::Failed, "agent");
    st.err = "task: non-zero exit (1)".into();
    let now = w.now;
    w.apply(Command::ReportTasks {
        node,
        reports: vec![TaskReport {
            id: victim,
            status: st,
        }],
        at_ms: now,
    })
    .unwrap();
    for _ in 0..20 {
        step(&mut w, &outcome);
    }
    assert_eq!(status(&w, web), done, "the finished update was reopened");
    assert_eq!(args_of(&w, web), vec!["v2"; 2]);
    assert_eq!(
        w.s.task(victim).unwrap().status.err,
        "task: non-zero exit (1)",
        "the failure keeps its reason"
    );
}

#[test]
fn a_manual_rollback_uses_the_rollback_policy() {
    let (mut w, web) = world(3, 4, |s| {
        s.rollback.parallelism = 0;
        s.rollback.order = UpdateOrder::StartFirst;
    });
    w.update(web, |s| s.task.args = vec!["v2".into()]);
    until_done(&mut w, web, 400, outcome, |_| {});
    let version = w.s.service(web).unwrap().version;
    let now = w.now;
    w.apply(Command::RollbackService {
        id: web,
        expected_version: Some(version),
        at_ms: now,
    })
    .unwrap();
    let s = status(&w, web);
    assert_eq!(s.state, UpdateState::RollbackStarted);
    assert_eq!(s.message, "manually requested rollback");
    let mut fewest = usize::MAX;
    let done = until_done(&mut w, web, 400, outcome, |w| {
        fewest = fewest.min(ready(w, web).len());
    });
    assert_eq!(done.state, UpdateState::RollbackCompleted);
    assert!(fewest >= 4, "start-first rollback dipped to {fewest}");
    assert_eq!(args_of(&w, web), vec!["v1"; 4]);
    // Nothing to roll back to twice in a row? The previous spec is now v2: a second rollback
    // goes forward again, as Swarm's does.
    let version = w.s.service(web).unwrap().version;
    w.apply(Command::RollbackService {
        id: web,
        expected_version: Some(version),
        at_ms: w.now,
    })
    .unwrap();
    until_done(&mut w, web, 400, outcome, |_| {});
    assert_eq!(args_of(&w, web), vec!["v2"; 4]);
}

#[test]
fn a_service_never_updated_has_nothing_to_roll_back() {
    let (mut w, web) = world(1, 1, |_| {});
    let err = w
        .apply(Command::RollbackService {
            id: web,
            expected_version: None,
            at_ms: w.now,
        })
        .unwrap_err();
    assert!(err.to_string().contains("no previous spec"), "{err}");
}

#[test]
fn an_update_survives_lost_plans_and_a_restored_state() {
    let (mut w, web) = world(3, 6, |s| s.update.parallelism = 2);
    w.update(web, |s| s.task.args = vec!["v2".into()]);
    for i in 0..40 {
        if i % 3 == 0 {
            // A leader that computed a plan and died before committing it.
            let _ = shoal_orchestrator::reconcile(&w.s, w.now, &w.cfg);
            w.now += STEP_MS;
            continue;
        }
        step(&mut w, &outcome);
    }
    // A new leader starts from the replicated state alone (here: a snapshot of it).
    let restored = ClusterState::restore(&w.s.snapshot()).unwrap();
    w.s = restored;
    let done = until_done(&mut w, web, 400, outcome, |_| {});
    assert_eq!(done.state, UpdateState::Completed);
    assert_eq!(args_of(&w, web), vec!["v2"; 6]);
}

#[test]
fn a_global_service_updates_node_by_node() {
    let mut w = World::new(4);
    let mut g = spec("g", 0);
    g.mode = ServiceMode::Global;
    g.task.args = vec!["v1".into()];
    g.update.monitor_ms = 1_000;
    let g = w.create(g);
    w.settle(20);
    w.update(g, |s| s.task.args = vec!["v2".into()]);
    let mut most_down = 0;
    let done = until_done(&mut w, g, 400, outcome, |w| {
        let up: BTreeSet<NodeId> = ready(w, g).iter().filter_map(|t| t.node).collect();
        most_down = most_down.max(4 - up.len());
    });
    assert_eq!(done.state, UpdateState::Completed);
    assert_eq!(most_down, 1);
    assert_eq!(args_of(&w, g), vec!["v2"; 4]);
}

#[test]
fn a_global_service_updates_start_first_without_a_gap() {
    let mut w = World::new(3);
    let mut g = spec("g", 0);
    g.mode = ServiceMode::Global;
    g.task.args = vec!["v1".into()];
    g.update.monitor_ms = 1_000;
    g.update.order = UpdateOrder::StartFirst;
    g.update.parallelism = 0;
    let g = w.create(g);
    w.settle(20);
    w.update(g, |s| s.task.args = vec!["v2".into()]);
    let mut fewest = usize::MAX;
    let done = until_done(&mut w, g, 400, outcome, |w| {
        let up: BTreeSet<NodeId> = ready(w, g).iter().filter_map(|t| t.node).collect();
        fewest = fewest.min(up.len());
    });
    assert_eq!(done.state, UpdateState::Completed);
    assert_eq!(fewest, 3, "a node went without a running task");
    assert_eq!(args_of(&w, g), vec!["v2"; 3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any policy, a good or a failing new spec: the update ends (completed, paused, or rolled
    /// back); with a good spec never more slots down than the parallelism allows (stop-first)
    /// and never fewer than the replicas running (start-first); a rollback ends on the old spec.
    #[test]
    fn every_policy_combination_converges(
        parallelism in 0u64..4,
        start_first in any::<bool>(),
        action in 0u8..3,
        ratio_ppm in prop::sample::select(vec![0u32, 250_000, 1_000_000]),
        good in any::<bool>(),
        replicas in 1u64..7,
        delay in prop::sample::select(vec![0u64, 500]),
    ) {
        let order = if start_first { UpdateOrder::StartFirst } else { UpdateOrder::StopFirst };
        let failure_action = [FailureAction::Pause, FailureAction::Continue, FailureAction::Rollback][action as usize];
        let (mut w, web) = world(3, replicas, |s| {
            s.update = UpdateConfig {
                parallelism,
                delay_ms: delay,
                failure_action,
                monitor_ms: 1_000,
                max_failure_ppm: ratio_ppm,
                order,
            };
            s.rollback.order = order;
            s.task.restart.max_attempts = 2;
        });
        w.update(web, |s| s.task.args = vec![if good { "v2" } else { "bad" }.into()]);
        let mut most_down = 0;
        let mut fewest = usize::MAX;
        let done = until_done(&mut w, web, 1_000, outcome, |w| {
            most_down = most_down.max(slots_down(w, web, replicas));
            fewest = fewest.min(ready(w, web).len());
        });
        let limit = if parallelism == 0 { replicas as usize } else { parallelism as usize };
        // Slots the update failed on are the restart policy's, and down while it tries: the
        // bound is on the slots being updated, which a good spec's are alone.
        if !start_first && good {
            prop_assert!(most_down <= limit, "{} down, parallelism {}", most_down, parallelism);
        }
        if good {
            prop_assert_eq!(done.state, UpdateState::Completed);
            prop_assert_eq!(args_of(&w, web), vec!["v2".to_string(); replicas as usize]);
            if start_first {
                prop_assert!(fewest >= replicas as usize, "capacity fell to {}", fewest);
            }
        } else {
            // Every slot fails the new spec: any ratio below 1 is exceeded before the end.
            let expected = match failure_action {
                _ if ratio_ppm == 1_000_000 => UpdateState::Completed,
                FailureAction::Continue => UpdateState::Completed,
                FailureAction::Pause => UpdateState::Paused,
                FailureAction::Rollback => UpdateState::RollbackCompleted,
            };
            prop_assert_eq!(done.state, expected, "{:?}", done);
            if expected == UpdateState::RollbackCompleted {
                prop_assert_eq!(args_of(&w, web), vec!["v1".to_string(); replicas as usize]);
            }
        }
    }
}
