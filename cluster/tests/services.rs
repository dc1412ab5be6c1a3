//! Services and tasks in the replicated state: creation, batched task changes, node reports
//! that only move forward, removal, and snapshots.

use shoal_cluster::*;

mod common;
use common::cluster;

/// A state with 3 nodes and one replicated service `web` (3 replicas); returns it, the next
/// Raft index and the service id.
fn with_service() -> (ClusterState, u64, ServiceId) {
    let mut s = cluster(1, 2);
    let index = s.applied() + 1;
    s.apply(
        index,
        &Command::CreateService {
            spec: ServiceSpec::new("web", "/bin/sleep", 3),
            at_ms: 100,
        },
    )
    .unwrap();
    let id = s.resolve_service("web").unwrap().id;
    (s, index + 1, id)
}

/// A state with one service and its slot-1 task assigned to node 2; the next index; the
/// service; the task.
fn with_task_on_node_2() -> (ClusterState, u64, ServiceId, TaskId) {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap().clone();
    s.apply(
        index,
        &Command::Tasks {
            changes: vec![new_task(&svc, 1, Some(2))],
            at_ms: 1,
        },
    )
    .unwrap();
    let tid = s.tasks_of_service(id).next().unwrap().id;
    (s, index, id, tid)
}

fn new_task(service: &Service, slot: u64, node: Option<NodeId>) -> TaskChange {
    TaskChange::Create(NewTask {
        service: service.id,
        spec_version: service.version,
        slot,
        node,
        desired: TaskState::Running,
        pending_reason: String::new(),
        restarts: 0,
        window_start_ms: 0,
        not_before_ms: 0,
    })
}

fn report(id: TaskId, state: TaskState) -> TaskReport {
    TaskReport {
        id,
        status: TaskStatus::new(state, "x"),
    }
}

#[test]
fn services_are_created_named_uniquely_and_resolved() {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap();
    assert_eq!(svc.version, index - 1);
    assert_eq!(svc.created_at_ms, 100);
    let short = &object_id_string(id)[..6];
    assert_eq!(s.resolve_service(short).unwrap().id, id);
    assert_eq!(s.resolve_service(&object_id_string(id)).unwrap().id, id);
    assert!(s
        .resolve_service("nope")
        .unwrap_err()
        .to_string()
        .contains("not found"));
    let again = s.apply(
        index,
        &Command::CreateService {
            spec: ServiceSpec::new("web", "/bin/true", 1),
            at_ms: 101,
        },
    );
    assert!(again.unwrap_err().to_string().contains("already exists"));
    let bad = s.apply(
        index + 1,
        &Command::CreateService {
            spec: ServiceSpec::new("bad name", "/bin/true", 1),
            at_ms: 101,
        },
    );
    assert!(bad.is_err());
    assert_eq!(s.services().len(), 1, "refused creates change nothing");
}

#[test]
fn updates_compare_and_set_keep_the_previous_spec_and_refuse_renames() {
    let (mut s, index, id) = with_service();
    let v1 = s.service(id).unwrap().version;
    let mut spec = s.service(id).unwrap().spec.clone();
    spec.task.env = vec!["A=1".into()];
    let update = |spec: ServiceSpec, expected| Command::UpdateService {
        id,
        expected_version: expected,
        spec,
        at_ms: 200,
    };
    let stale = s.apply(index, &update(spec.clone(), Some(v1 + 100)));
    assert!(stale.unwrap_err().to_string().contains("out of sequence"));
    s.apply(index + 1, &update(spec.clone(), Some(v1))).unwrap();
    let svc = s.service(id).unwrap();
    assert_eq!(svc.version, index + 1);
    assert_eq!(
        svc.previous.as_ref().unwrap().task.env,
        Vec::<String>::new()
    );
    assert!(
        svc.versions.is_empty(),
        "no task runs the old spec: not kept"
    );
    let mut renamed = spec.clone();
    renamed.name = "api".into();
    assert!(s.apply(index + 2, &update(renamed, None)).is_err());
    let mut global = spec;
    global.mode = ServiceMode::Global;
    let e = s.apply(index + 3, &update(global, None)).unwrap_err();
    assert!(e.to_string().contains("mode cannot be changed"), "{e}");
}

#[test]
fn a_batch_creates_assigns_and_explains_tasks_and_keeps_one_live_task_per_slot() {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap().clone();
    let changes = vec![
        new_task(&svc, 1, Some(2)),
        new_task(&svc, 2, Some(3)),
        new_task(&svc, 3, None),
        // A second live task for slot 1 is skipped, whatever the orchestrator saw.
        new_task(&svc, 1, Some(3)),
        // Slot 0 is not a replicated slot; node 99 does not exist.
        new_task(&svc, 0, Some(2)),
        new_task(&svc, 4, Some(99)),
    ];
    s.apply(
        index,
        &Command::Tasks {
            changes,
            at_ms: 300,
        },
    )
    .unwrap();
    let tasks: Vec<&Task> = s.tasks_of_service(id).collect();
    assert_eq!(tasks.len(), 3);
    assert_eq!(
        tasks.iter().map(|t| t.slot).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let pending = tasks[2].clone();
    assert_eq!(pending.status.state, TaskState::Pending);
    assert_eq!(tasks[0].status.state, TaskState::Assigned);
    assert_eq!(s.tasks_on_node(2).count(), 1);
    s.apply(
        index + 1,
        &Command::Tasks {
            changes: vec![
                TaskChange::Pending {
                    id: pending.id,
                    reason: "no suitable node (insufficient resources on 3 nodes)".into(),
                },
                TaskChange::Assign {
                    id: pending.id,
                    node: 1,
                },
                // Assigning twice does nothing.
                TaskChange::Assign {
                    id: pending.id,
                    node: 2,
                },
            ],
            at_ms: 301,
        },
    )
    .unwrap();
    let t = s.task(pending.id).unwrap();
    assert_eq!((t.node, t.status.state), (Some(1), TaskState::Assigned));
    assert_eq!(s.tasks_on_node(1).count(), 1);
}

#[test]
fn reports_only_move_forward_and_only_from_the_tasks_node() {
    let (mut s, index, _, tid) = with_task_on_node_2();
    let mut running = report(tid, TaskState::Running);
    running.status.pid = 42;
    let reports = |node, reports| Command::ReportTasks {
        node,
        reports,
        at_ms: 500,
    };
    // From another node: ignored.
    s.apply(index + 1, &reports(3, vec![running.clone()]))
        .unwrap();
    assert_eq!(s.task(tid).unwrap().status.state, TaskState::Assigned);
    s.apply(index + 2, &reports(2, vec![running])).unwrap();
    let t = s.task(tid).unwrap();
    assert_eq!((t.status.state, t.status.pid), (TaskState::Running, 42));
    assert_eq!(t.status.timestamp_ms, 500);
    // A late "starting" (a regression) and a node claiming "orphaned" are ignored.
    s.apply(
        index + 3,
        &reports(
            2,
            vec![
                report(tid, TaskState::Starting),
                report(tid, TaskState::Orphaned),
            ],
        ),
    )
    .unwrap();
    assert_eq!(s.task(tid).unwrap().status.state, TaskState::Running);
    let mut failed = report(tid, TaskState::Failed);
    failed.status.exit_code = Some(3);
    s.apply(index + 4, &reports(2, vec![failed])).unwrap();
    assert_eq!(s.task(tid).unwrap().status.exit_code, Some(3));
    // An unknown node's reports are refused whole.
    assert!(s.apply(index + 5, &reports(77, vec![])).is_err());
}

#[test]
fn desired_state_only_moves_forward_and_the_reaper_deletes_only_ended_tasks() {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap().clone();
    s.apply(
        index,
        &Command::Tasks {
            changes: vec![new_task(&svc, 1, Some(2)), new_task(&svc, 2, None)],
            at_ms: 1,
        },
    )
    .unwrap();
    let ids: Vec<TaskId> = s.tasks_of_service(id).map(|t| t.id).collect();
    let tasks = |changes| Command::Tasks { changes, at_ms: 2 };
    s.apply(
        index + 1,
        &tasks(vec![
            TaskChange::Desired {
                id: ids[0],
                desired: TaskState::Shutdown,
            },
            TaskChange::Desired {
                id: ids[0],
                desired: TaskState::Running,
            },
            TaskChange::Delete { id: ids[0] },
        ]),
    )
    .unwrap();
    let t = s.task(ids[0]).unwrap();
    assert_eq!(t.desired, TaskState::Shutdown, "desired never goes back");
    // Still assigned on a live node: not deleted until it has ended.
    s.apply(
        index + 2,
        &Command::ReportTasks {
            node: 2,
            reports: vec![report(ids[0], TaskState::Shutdown)],
            at_ms: 3,
        },
    )
    .unwrap();
    s.apply(
        index + 3,
        &tasks(vec![
            TaskChange::Delete { id: ids[0] },
            // A pending task that is still wanted is not deleted either.
            TaskChange::Delete { id: ids[1] },
        ]),
    )
    .unwrap();
    assert!(s.task(ids[0]).is_none());
    assert!(s.task(ids[1]).is_some());
    assert_eq!(s.tasks_on_node(2).count(), 0, "the node index follows");
}

#[test]
fn removing_a_service_tells_its_tasks_to_go() {
    let (mut s, index, id, _) = with_task_on_node_2();
    let svc = s.service(id).unwrap().clone();
    s.apply(index + 1, &Command::RemoveService { id, at_ms: 2 })
        .unwrap();
    assert!(s.service(id).is_none());
    let t = s.tasks_of_service(id).next().unwrap();
    assert_eq!(t.desired, TaskState::Remove);
    // Creating tasks for a removed service is skipped.
    s.apply(
        index + 2,
        &Command::Tasks {
            changes: vec![new_task(&svc, 2, Some(2))],
            at_ms: 3,
        },
    )
    .unwrap();
    assert_eq!(s.tasks().len(), 1);
    assert!(s
        .apply(index + 3, &Command::RemoveService { id, at_ms: 4 })
        .is_err());
}

#[test]
fn snapshots_keep_services_tasks_settings_and_rebuild_the_indexes() {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap().clone();
    s.apply(
        index,
        &Command::Tasks {
            changes: vec![new_task(&svc, 1, Some(2)), new_task(&svc, 2, None)],
            at_ms: 1,
        },
    )
    .unwrap();
    s.apply(
        index + 1,
        &Command::UpdateSettings {
            task_history_limit: Some(2),
            at_ms: 2,
        },
    )
    .unwrap();
    assert!(s
        .apply(
            index + 2,
            &Command::UpdateSettings {
                task_history_limit: Some(100_000),
                at_ms: 2,
            },
        )
        .is_err());
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(restored, s);
    assert_eq!(restored.settings().task_history_limit, 2);
    assert_eq!(restored.tasks_on_node(2).count(), 1);
    assert_eq!(restored.slot_tasks(id, 2).count(), 1);
}

#[test]
fn oversized_batches_are_refused_whole() {
    let (mut s, index, id) = with_service();
    let svc = s.service(id).unwrap().clone();
    let changes = (1..=MAX_BATCH as u64 + 1)
        .map(|slot| new_task(&svc, slot, None))
        .collect();
    assert!(s
        .apply(index, &Command::Tasks { changes, at_ms: 1 })
        .is_err());
    assert!(s.tasks().is_empty());
}

#[test]
fn large_task_batches_are_split_into_entries_that_decode() {
    let change = TaskChange::Pending {
        id: 7,
        reason: "no suitable node (insufficient resources on 3 nodes)".repeat(4),
    };
    let changes = vec![change; 20_000];
    let entries = Command::encode_task_batches(&changes, 5);
    assert!(entries.len() >= 3);
    let mut total = 0;
    for e in &entries {
        assert!(e.len() <= MAX_COMMAND_SIZE);
        match Command::decode(e).unwrap() {
            Command::Tasks { changes, at_ms } => {
                assert_eq!(at_ms, 5);
                assert!(changes.len() <= MAX_BATCH);
                total += changes.len();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, 20_000);
}

#[test]
fn a_running_task_records_its_ports_and_older_snapshots_have_none() {
    let (mut s, index, _, tid) = with_task_on_node_2();
    let before = s.snapshot();
    let mut running = report(tid, TaskState::Running);
    running.status.ports = vec![TaskPort {
        target: 80,
        published: 49153,
        udp: false,
    }];
    let cmd = Command::ReportTasks {
        node: 2,
        reports: vec![running.clone()],
        at_ms: 5,
    };
    s.apply(index + 1, &Command::decode(&cmd.encode()).unwrap())
        .unwrap();
    let t = s.task(tid).unwrap();
    assert_eq!(t.status.ports, running.status.ports);
    assert_eq!(t.status.ports[0].to_string(), "*:49153->80/tcp");
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.task(tid).unwrap().status.ports, t.status.ports);
    // Too many ports: the report is not taken.
    let mut many = report(tid, TaskState::Failed);
    many.status.ports = vec![running.status.ports[0]; 65];
    s.apply(
        index + 2,
        &Command::ReportTasks {
            node: 2,
            reports: vec![many],
            at_ms: 6,
        },
    )
    .unwrap();
    assert_eq!(s.task(tid).unwrap().status.state, TaskState::Running);

    // A version-8 snapshot is the same bytes without the task's (empty) port list.
    let mut with_port = ClusterState::restore(&before).unwrap();
    let mut r = report(tid, TaskState::Running);
    r.status.ports = running.status.ports.clone();
    with_port
        .apply(
            index + 1,
            &Command::ReportTasks {
                node: 2,
                reports: vec![report(tid, TaskState::Accepted)],
                at_ms: 2,
            },
        )
        .unwrap();
    let empty = with_port.snapshot();
    with_port
        .apply(
            index + 2,
            &Command::ReportTasks {
                node: 2,
                reports: vec![r],
                at_ms: 2,
            },
        )
        .unwrap();
    let mut no_port = ClusterState::restore(&empty).unwrap();
    no_port
        .apply(
            index + 2,
            &Command::ReportTasks {
                node: 2,
                reports: vec![report(tid, TaskState::Running)],
                at_ms: 2,
            },
        )
        .unwrap();
    let (a, b) = (no_port.snapshot(), with_port.snapshot());
    let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
    assert_eq!(a[at], 0, "the empty port list's length");
    let mut v8 = a.clone();
    v8.remove(at);
    // Version 8 has no operators map (version 10's last field) either.
    assert_eq!(v8.pop(), Some(0));
    v8[0] = 8;
    let old = ClusterState::restore(&v8).unwrap();
    assert_eq!(old.task(tid).unwrap().status.state, TaskState::Running);
    assert!(old.task(tid).unwrap().status.ports.is_empty());
    v8[0] = SNAPSHOT_VERSION;
    assert!(ClusterState::restore(&v8).is_err());
}
