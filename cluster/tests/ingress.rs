//! Ingress ports in the replicated state: a port without a number gets one from 30000-32767 and
//! keeps it across updates, a port another service holds is refused naming that service, and
//! the endpoint table lists the running tasks, ready only while healthy and to keep running.

use shoal_cluster::*;

mod common;
use common::cluster;

fn next(s: &ClusterState) -> u64 {
    s.applied() + 1
}

fn apply(s: &mut ClusterState, cmd: Command) -> Result<(), ClusterError> {
    let cmd = Command::decode(&cmd.encode()).unwrap();
    let index = next(s);
    s.apply(index, &cmd)
}

fn port(published: u16, target: u16, udp: bool, mode: PublishMode) -> PortConfig {
    PortConfig {
        published,
        target,
        udp,
        mode,
    }
}

fn create(s: &mut ClusterState, name: &str, ports: Vec<PortConfig>) -> Result<(), ClusterError> {
    let mut spec = ServiceSpec::new(name, "/bin/sleep", 2);
    spec.task.ports = ports;
    apply(s, Command::CreateService { spec, at_ms: 5 })
}

fn ports_of(s: &ClusterState, name: &str) -> Vec<(u16, u16, bool)> {
    let svc = s.resolve_service(name).unwrap();
    svc.spec
        .task
        .ports
        .iter()
        .map(|p| (p.published, p.target, p.udp))
        .collect()
}

#[test]
fn ingress_ports_are_numbered_kept_and_refused_when_taken() {
    use PublishMode::{Host, Ingress};
    let mut s = cluster(1, 2);
    create(&mut s, "web", vec![port(8080, 80, false, Ingress)]).unwrap();
    // No number: the lowest free of the range, per protocol.
    create(
        &mut s,
        "api",
        vec![port(0, 9000, false, Ingress), port(0, 53, true, Ingress)],
    )
    .unwrap();
    assert_eq!(
        ports_of(&s, "api"),
        vec![(30000, 9000, false), (30000, 53, true)]
    );
    create(&mut s, "api2", vec![port(0, 9000, false, Ingress)]).unwrap();
    assert_eq!(ports_of(&s, "api2"), vec![(30001, 9000, false)]);

    // Taken: refused, naming the holder, whatever the mode of either.
    let web = s.resolve_service("web").unwrap().id;
    for (p, holder) in [
        (port(8080, 81, false, Ingress), "web"),
        (port(8080, 81, false, Host), "web"),
        (port(30001, 1, false, Ingress), "api2"),
    ] {
        let e = create(&mut s, "clash", vec![p]).unwrap_err().to_string();
        assert!(e.contains("is already in use by service"), "{e}");
        assert!(e.contains(holder), "{e}");
    }
    let e = create(&mut s, "clash", vec![port(8080, 81, false, Ingress)])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "port 8080/tcp is already in use by service web ({}) as an ingress port",
            object_id_string(web)
        )
    );
    // The same number over the other protocol, or host mode against host mode, is free.
    create(&mut s, "udp", vec![port(8080, 80, true, Ingress)]).unwrap();
    create(&mut s, "h1", vec![port(7000, 80, false, Host)]).unwrap();
    create(&mut s, "h2", vec![port(7000, 80, false, Host)]).unwrap();
    let e = create(&mut s, "clash", vec![port(7000, 80, false, Ingress)])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("by service h") && e.contains("as a host-mode port"),
        "{e}"
    );

    // An update that says `-p 9000` again keeps the number it had: no new rollout.
    let api = s.resolve_service("api").unwrap().clone();
    let mut spec = api.spec.clone();
    spec.task.ports[0].published = 0;
    apply(
        &mut s,
        Command::UpdateService {
            id: api.id,
            expected_version: Some(api.version),
            spec,
            at_ms: 6,
        },
    )
    .unwrap();
    let after = s.resolve_service("api").unwrap().clone();
    assert_eq!(after.spec.task.ports[0].published, 30000);
    assert!(
        after.update_status.is_none(),
        "the same spec: nothing to roll out"
    );
    // An update may not take another service's port either.
    let mut spec = after.spec.clone();
    spec.task.ports[0].published = 8080;
    let e = apply(
        &mut s,
        Command::UpdateService {
            id: after.id,
            expected_version: Some(after.version),
            spec,
            at_ms: 7,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("service web"), "{e}");
    // Removing a service frees its port.
    apply(&mut s, Command::RemoveService { id: web, at_ms: 8 }).unwrap();
    create(&mut s, "web2", vec![port(8080, 80, false, Ingress)]).unwrap();
    // Kept across a snapshot.
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(ports_of(&restored, "api"), ports_of(&s, "api"));
}

#[test]
fn rollback_refuses_a_port_taken_since() {
    use PublishMode::Ingress;
    let mut s = cluster(1, 1);
    create(&mut s, "a", vec![port(8080, 80, false, Ingress)]).unwrap();
    let a = s.resolve_service("a").unwrap().clone();
    let mut spec = a.spec.clone();
    spec.task.ports[0].published = 9090;
    apply(
        &mut s,
        Command::UpdateService {
            id: a.id,
            expected_version: Some(a.version),
            spec,
            at_ms: 6,
        },
    )
    .unwrap();
    create(&mut s, "b", vec![port(8080, 80, false, Ingress)]).unwrap();
    let e = apply(
        &mut s,
        Command::RollbackService {
            id: a.id,
            expected_version: None,
            at_ms: 7,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("in use by service b"), "{e}");
}

#[test]
fn endpoints_list_running_tasks_ready_only_while_healthy_and_wanted() {
    use PublishMode::Ingress;
    let mut s = cluster(1, 2);
    create(&mut s, "web", vec![port(8080, 80, false, Ingress)]).unwrap();
    let svc = s.resolve_service("web").unwrap().clone();
    let changes = (1..=2)
        .map(|slot| {
            TaskChange::Create(NewTask {
                service: svc.id,
                spec_version: svc.version,
                slot,
                node: Some(slot + 1),
                desired: TaskState::Running,
                pending_reason: String::new(),
                restarts: 0,
                window_start_ms: 0,
                not_before_ms: 0,
            })
        })
        .collect();
    apply(&mut s, Command::Tasks { changes, at_ms: 9 }).unwrap();
    let ids: Vec<TaskId> = s.tasks_of_service(svc.id).map(|t| t.id).collect();
    let table = s.endpoints();
    assert_eq!(table.len(), 1);
    assert_eq!(table[0].ports, svc.spec.task.ports);
    assert!(table[0].tasks.is_empty(), "not running yet");

    let running = |id, health, published| TaskReport {
        id,
        status: TaskStatus {
            health,
            ports: vec![TaskPort {
                target: 80,
                published,
                udp: false,
            }],
            ..TaskStatus::new(TaskState::Running, "started")
        },
    };
    for (i, (id, health)) in ids.iter().zip([Health::None, Health::Starting]).enumerate() {
        let node = i as u64 + 2;
        let reports = vec![running(*id, health, 40000 + node as u16)];
        apply(
            &mut s,
            Command::ReportTasks {
                node,
                reports,
                at_ms: 10,
            },
        )
        .unwrap();
    }
    let tasks = &s.endpoints()[0].tasks;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].ip, "127.0.0.1");
    assert_eq!(tasks[0].port_for(80, false), Some(40002));
    assert_eq!(tasks[0].port_for(80, true), None);
    assert!(tasks[0].ready);
    assert!(!tasks[1].ready, "starting: not healthy yet");

    // Healthy: ready. To be stopped: drained (listed, not ready).
    apply(
        &mut s,
        Command::ReportTasks {
            node: 3,
            reports: vec![running(ids[1], Health::Healthy, 40003)],
            at_ms: 11,
        },
    )
    .unwrap();
    assert!(s.endpoints()[0].tasks[1].ready);
    apply(
        &mut s,
        Command::Tasks {
            changes: vec![TaskChange::Desired {
                id: ids[0],
                desired: TaskState::Shutdown,
            }],
            at_ms: 12,
        },
    )
    .unwrap();
    let tasks = &s.endpoints()[0].tasks;
    assert!(!tasks[0].ready && tasks[1].ready);
}
