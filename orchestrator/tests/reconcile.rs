//! The orchestrator against a replicated state it drives: simulated agents report what they
//! were told, and every pass is applied as the leader would (in batches, through `apply`).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use shoal_cluster::*;
use shoal_orchestrator::{reconcile, Config};
#[test]
fn a_replicated_service_is_spread_and_scaled_up_and_down() {
    let mut w = World::new(3);
    let web = w.create(spec("web", 6));
    w.settle(10);
    assert_eq!(w.running(web).len(), 6);
    assert_eq!(
        w.running_on(web).values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    let slots: BTreeSet<u64> = w.running(web).iter().map(|t| t.slot).collect();
    assert_eq!(slots, (1..=6).collect());

    w.update(web, |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    w.settle(10);
    assert_eq!(w.running(web).len(), 2);
    assert_eq!(w.running_on(web).len(), 2, "scale down keeps the spread");
    // Scaled-down tasks are told to go and forgotten once stopped.
    let kept: BTreeSet<u64> = w.running(web).iter().map(|t| t.slot).collect();
    assert!(w.s.tasks_of_service(web).all(|t| kept.contains(&t.slot)));

    // Scale up fills the lowest free slots.
    w.update(web, |s| s.mode = ServiceMode::Replicated { replicas: 4 });
    w.settle(10);
    let mut expected = kept.clone();
    expected.extend((1..).filter(|s| !kept.contains(s)).take(2));
    let slots: BTreeSet<u64> = w.running(web).iter().map(|t| t.slot).collect();
    assert_eq!(slots, expected);
}

#[test]
fn a_failed_task_is_restarted_after_the_delay_in_the_same_slot() {
    let mut w = World::new(2);
    let web = w.create(spec("web", 1));
    w.settle(10);
    let first = w.running(web)[0].id;
    let node = w.running(web)[0].node.unwrap();
    w.apply(Command::ReportTasks {
        node,
        reports: vec![TaskReport {
            id: first,
            status: TaskStatus::new(TaskState::Failed, "exit 1"),
        }],
        at_ms: w.now,
    })
    .unwrap();
    let plan = w.pass();
    // Created waiting (desired ready) until the 5 s delay has passed.
    let next: Vec<&Task> = w.s.slot_tasks(web, 1).filter(|t| t.id != first).collect();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].desired, TaskState::Ready);
    assert_eq!(next[0].restarts, 1);
    assert_eq!(plan.wake_at_ms, Some(w.now + 5_000));
    assert_eq!(w.s.task(first).unwrap().desired, TaskState::Shutdown);
    w.agents(|_| TaskState::Running);
    assert!(w.running(web).is_empty(), "not started before the delay");
    w.now += 5_000;
    w.settle(10);
    assert_eq!(w.running(web).len(), 1);
    assert_eq!(w.running(web)[0].slot, 1);
}

#[test]
fn restart_policy_none_on_failure_and_max_attempts_are_obeyed() {
    let mut w = World::new(1);
    let mut s = spec("once", 1);
    s.task.restart.condition = RestartCondition::OnFailure;
    s.task.restart.delay_ms = 0;
    s.task.restart.max_attempts = 2;
    let svc = w.create(s);
    // Every start fails: two restarts, then the slot stays failed.
    for _ in 0..10 {
        w.pass();
        w.agents(|_| TaskState::Failed);
        w.now += 1_000;
    }
    let tasks: Vec<&Task> = w.s.slot_tasks(svc, 1).collect();
    assert_eq!(tasks.len(), 3, "the first run and two restarts");
    assert!(tasks.iter().all(|t| t.status.state == TaskState::Failed));

    // on-failure: a task that completes is not restarted.
    let mut s = spec("batch", 1);
    s.task.restart.condition = RestartCondition::OnFailure;
    let batch = w.create(s);
    for _ in 0..5 {
        w.pass();
        w.agents(|_| TaskState::Complete);
        w.now += 1_000;
    }
    assert_eq!(w.s.slot_tasks(batch, 1).count(), 1);
    assert_eq!(
        w.s.slot_tasks(batch, 1).next().unwrap().status.state,
        TaskState::Complete
    );
}

#[test]
fn attempts_exhausted_in_a_window_resume_when_the_window_ends() {
    let mut w = World::new(1);
    let mut s = spec("flaky", 1);
    s.task.restart.condition = RestartCondition::OnFailure;
    s.task.restart.delay_ms = 0;
    s.task.restart.max_attempts = 2;
    s.task.restart.window_ms = 30_000;
    let svc = w.create(s);
    let start = w.now;
    let mut plan = w.pass();
    for _ in 0..4 {
        w.agents(|_| TaskState::Failed);
        w.now += 1_000;
        plan = w.pass();
    }
    assert_eq!(
        w.s.slot_tasks(svc, 1).count(),
        3,
        "the first run and two restarts"
    );
    // Given up for this window, with a wake-up when the next one opens: nothing else need
    // happen in the cluster for the slot to be tried again.
    // The window began with the first restart, a second after the first start.
    let window_start = start + 1_000;
    assert!(w
        .s
        .slot_tasks(svc, 1)
        .all(|t| t.window_start_ms <= window_start));
    assert_eq!(plan.wake_at_ms, Some(window_start + 30_001));
    w.now = window_start + 30_001;
    w.pass();
    w.agents(|_| TaskState::Running);
    assert_eq!(w.running(svc).len(), 1);
    assert_eq!(w.s.slot_tasks(svc, 1).count(), 4);
}

#[test]
fn tasks_on_a_down_or_drained_node_are_replaced_elsewhere() {
    let mut w = World::new(3);
    let web = w.create(spec("web", 3));
    w.settle(10);
    assert_eq!(w.running_on(web).len(), 3);
    w.set_state(3, NodeState::Down);
    w.settle(10);
    let on = w.running_on(web);
    assert_eq!(on.values().sum::<usize>(), 3);
    assert!(!on.contains_key(&3));
    // The lost task keeps its slot's history: shutdown desired, not yet confirmed.
    let lost: Vec<&Task> = w.s.tasks_on_node(3).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].desired, TaskState::Shutdown);

    w.drain(2);
    w.settle(10);
    assert_eq!(
        w.running_on(web).keys().copied().collect::<Vec<_>>(),
        vec![1]
    );
    assert_eq!(w.running(web).len(), 3);
    assert!(w
        .s
        .tasks_on_node(2)
        .all(|t| t.status.state == TaskState::Shutdown));
}

#[test]
fn a_paused_node_keeps_its_tasks_and_gets_no_new_ones() {
    let mut w = World::new(2);
    let web = w.create(spec("web", 2));
    w.settle(10);
    assert_eq!(w.running_on(web), BTreeMap::from([(1, 1), (2, 1)]));
    w.availability(2, Availability::Pause);
    w.update(web, |s| s.mode = ServiceMode::Replicated { replicas: 4 });
    w.settle(10);
    // The paused node's task stays; the new ones go elsewhere.
    assert_eq!(w.running_on(web), BTreeMap::from([(1, 3), (2, 1)]));
    // A global service skips it too, and covers it once it is active again.
    let mut g = spec("g", 0);
    g.mode = ServiceMode::Global;
    let g = w.create(g);
    w.settle(10);
    assert_eq!(w.running_on(g), BTreeMap::from([(1, 1)]));
    w.availability(2, Availability::Active);
    w.settle(10);
    assert_eq!(w.running_on(g), BTreeMap::from([(1, 1), (2, 1)]));
}

#[test]
fn a_task_lost_with_its_node_is_orphaned_after_the_timeout() {
    let mut w = World::new(2);
    w.cfg.orphan_after_ms = 60_000;
    let web = w.create(spec("web", 2));
    w.settle(10);
    w.set_state(2, NodeState::Down);
    let plan = w.pass();
    assert!(plan.wake_at_ms.is_some_and(|t| t <= w.now + 60_000));
    w.now += 61_000;
    w.settle(10);
    let lost: Vec<&Task> = w.s.tasks_on_node(2).collect();
    assert_eq!(lost.len(), 1);
    assert_eq!(lost[0].status.state, TaskState::Orphaned);
    assert_eq!(w.running(web).len(), 2);
}

#[test]
fn a_global_service_runs_once_on_every_eligible_node() {
    let mut w = World::new(3);
    let mut s = spec("agent", 0);
    s.mode = ServiceMode::Global;
    let g = w.create(s);
    w.settle(10);
    assert_eq!(w.running_on(g), BTreeMap::from([(1, 1), (2, 1), (3, 1)]));
    // A node that joins gets one; a drained node loses its own.
    w.add_node(4, 1 << 30);
    w.set_state(4, NodeState::Ready);
    w.drain(1);
    w.settle(10);
    assert_eq!(w.running_on(g), BTreeMap::from([(2, 1), (3, 1), (4, 1)]));
    // A down node keeps its task (it runs again when the node returns), and gets no second one.
    w.set_state(3, NodeState::Down);
    w.settle(10);
    assert_eq!(w.running_on(g), BTreeMap::from([(2, 1), (3, 1), (4, 1)]));
    assert_eq!(w.s.tasks_on_node(3).filter(|t| t.wanted()).count(), 1);
}

#[test]
fn tasks_that_do_not_fit_stay_pending_with_the_reason_and_start_when_room_frees() {
    let mut w = World::new(2);
    let mut big = spec("big", 3);
    big.task.resources.reservations.memory_bytes = 600 << 20;
    let svc = w.create(big);
    w.settle(10);
    assert_eq!(w.running(svc).len(), 2);
    let pending: Vec<&Task> =
        w.s.tasks_of_service(svc)
            .filter(|t| t.status.state == TaskState::Pending)
            .collect();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0].status.err.contains("insufficient resources"),
        "{}",
        pending[0].status.err
    );
    w.add_node(3, 1 << 30);
    w.set_state(3, NodeState::Ready);
    w.settle(10);
    assert_eq!(w.running(svc).len(), 3);
}

#[test]
fn container_tasks_go_only_where_the_engine_is_and_host_ports_do_not_collide() {
    let mut w = World::new(3);
    // Node 1 has no engine; nodes 2 and 3 have one.
    for id in [2, 3] {
        let mut n = node(id, 1 << 30);
        n.description.runtimes = vec![Runtime::Process, Runtime::Container];
        let now = w.now;
        w.apply(Command::UpdateDescription {
            id,
            description: n.description,
            addr: n.addr,
            at_ms: now,
        })
        .unwrap();
    }
    let mut web = spec("web", 3);
    web.task.runtime = Runtime::Container;
    web.task.ports = vec![PortConfig {
        published: 8080,
        target: 80,
        udp: false,
        mode: PublishMode::Host,
    }];
    let svc = w.create(web);
    w.settle(10);
    // One task per engine node (each binds 8080 there); the third has nowhere to go.
    assert_eq!(
        w.running_on(svc),
        BTreeMap::from([(2, 1), (3, 1)]),
        "{:?}",
        w.running_on(svc)
    );
    let pending: Vec<&Task> =
        w.s.tasks_of_service(svc)
            .filter(|t| t.status.state == TaskState::Pending)
            .collect();
    assert_eq!(pending.len(), 1);
    let why = &pending[0].status.err;
    assert!(
        why.contains("runtime \"container\" not available on 1 node")
            && why.contains("host-mode port already in use on 2 nodes"),
        "{why}"
    );
    // Another service may use another port on the same nodes.
    let mut api = spec("api", 2);
    api.task.runtime = Runtime::Container;
    api.task.ports = vec![PortConfig {
        published: 9090,
        target: 80,
        udp: false,
        mode: PublishMode::Host,
    }];
    let api = w.create(api);
    w.settle(10);
    assert_eq!(w.running(api).len(), 2);
    // Scaled to what fits, nothing is left pending.
    w.update(svc, |s| s.mode = ServiceMode::Replicated { replicas: 2 });
    w.settle(10);
    assert_eq!(w.running(svc).len(), 2);
    assert_eq!(
        w.s.tasks_of_service(svc)
            .filter(|t| t.status.state == TaskState::Pending && t.wanted())
            .count(),
        0
    );
}

#[test]
fn an_updated_spec_rolls_out_one_slot_at_a_time_stop_first() {
    let mut w = World::new(3);
    let web = w.create(spec("web", 3));
    w.settle(10);
    w.update(web, |s| s.task.env.push("V=2".into()));
    let version = w.s.service(web).unwrap().version;
    let mut most_new_at_once = 0;
    for _ in 0..20 {
        w.pass();
        let starting =
            w.s.tasks_of_service(web)
                .filter(|t| {
                    t.live() && t.spec_version == version && t.status.state < TaskState::Running
                })
                .count();
        most_new_at_once = most_new_at_once.max(starting);
        w.agents(|_| TaskState::Running);
        w.check();
        w.now += 1_000;
    }
    assert_eq!(most_new_at_once, 1, "parallelism 1");
    assert_eq!(w.running(web).len(), 3);
    assert!(w.running(web).iter().all(|t| t.spec_version == version));
    // A change that leaves the task spec alone (labels) replaces nothing.
    let ids: BTreeSet<TaskId> = w.running(web).iter().map(|t| t.id).collect();
    w.update(web, |s| {
        s.labels.insert("team".into(), "a".into());
    });
    w.settle(10);
    assert_eq!(
        w.running(web).iter().map(|t| t.id).collect::<BTreeSet<_>>(),
        ids
    );
}

#[test]
fn history_is_reaped_to_the_limit_and_removed_services_leave_no_tasks() {
    let mut w = World::new(1);
    let mut s = spec("crashy", 1);
    s.task.restart.delay_ms = 0;
    let svc = w.create(s);
    for _ in 0..12 {
        w.pass();
        w.agents(|_| TaskState::Failed);
        w.now += 1_000;
    }
    let n = w.s.slot_tasks(svc, 1).count();
    assert!(n <= 5, "history limit 5, {n} kept");
    let now = w.now;
    w.apply(Command::RemoveService {
        id: svc,
        at_ms: now,
    })
    .unwrap();
    w.settle(10);
    assert_eq!(w.s.tasks().len(), 0);
}

#[test]
fn a_new_leader_resumes_from_the_state_alone() {
    // Two orchestrators (the old leader's and the new one's) see the same state: the plans are
    // equal, so a failover neither loses nor duplicates work.
    let mut w = World::new(3);
    w.create(spec("web", 5));
    w.pass();
    w.agents(|_| TaskState::Running);
    w.set_state(2, NodeState::Down);
    let a = reconcile(&w.s, w.now, &w.cfg);
    let b = reconcile(&w.s.clone(), w.now, &Config::default());
    assert_eq!(a, b);
    assert!(!a.changes.is_empty());
}

#[test]
fn a_plan_cut_at_the_change_limit_says_so_and_the_rest_follows() {
    let mut w = World::new(3);
    w.cfg.max_changes = 10;
    let web = w.create(spec("web", 25));
    let plan = w.pass();
    assert!(plan.more);
    assert_eq!(plan.changes.len(), 10);
    w.settle(20);
    assert_eq!(w.running(web).len(), 25);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random scaling, node failures, drains and task failures: after every step at most one live
    /// task per slot and no over-committed node; once things calm down, every service runs its
    /// replica count and every global service one task per eligible node.
    #[test]
    fn random_histories_converge(
        steps in prop::collection::vec((0u8..6, 0u64..8, 1u64..5), 1..25),
    ) {
        let mut w = World::new(4);
        let mut web = spec("web", 3);
        web.task.resources.reservations.memory_bytes = 100 << 20;
        // Killed tasks would pause an update (a failure within its monitor period): here every
        // spec must roll out, whatever fails on the way.
        web.update.failure_action = FailureAction::Continue;
        let web = w.create(web);
        let mut g = spec("g", 0);
        g.mode = ServiceMode::Global;
        let g = w.create(g);
        for (op, arg, node) in steps {
            match op {
                0 => w.update(web, |s| s.mode = ServiceMode::Replicated { replicas: arg }),
                1 => w.set_state(node, NodeState::Down),
                2 => w.set_state(node, NodeState::Ready),
                3 => {
                    let victim = w.running(web).first().map(|t| (t.id, t.node.unwrap()));
                    if let Some((id, n)) = victim {
                        let now = w.now;
                        w.apply(Command::ReportTasks {
                            node: n,
                            reports: vec![TaskReport { id, status: TaskStatus::new(TaskState::Failed, "x") }],
                            at_ms: now,
                        }).unwrap();
                    }
                }
                4 => w.update(web, |s| s.task.args = vec![arg.to_string()]),
                _ => {}
            }
            w.pass();
            w.agents(|_| TaskState::Running);
            w.check();
            w.now += 700;
        }
        for id in 1..=4 {
            w.set_state(id, NodeState::Ready);
        }
        w.now += 10_000;
        w.settle(40);
        let replicas = match w.s.service(web).unwrap().spec.mode {
            ServiceMode::Replicated { replicas } => replicas as usize,
            ServiceMode::Global => unreachable!(),
        };
        prop_assert_eq!(w.running(web).len(), replicas);
        // Every task runs the current task spec (a scale alone replaces nothing).
        let svc = w.s.service(web).unwrap();
        prop_assert!(w
            .running(web)
            .iter()
            .all(|t| svc.spec_of(t.spec_version).unwrap().task == svc.spec.task));
        prop_assert_eq!(w.running_on(g).len(), 4);
        prop_assert!(w.running_on(g).values().all(|c| *c == 1));
    }
}
