//! Scenario tests, including the examples of the Swarm documentation.

use std::net::IpAddr;

use crate::*;

const GIB: u64 = 1 << 30;

fn node(id: &str) -> Node {
    Node::new(id, Resources::new(4_000, 8 * GIB))
}

fn replicated(id: &str) -> ServiceSpec {
    ServiceSpec::new(id, Mode::Replicated).unwrap()
}

fn request(spec: ServiceSpec, tasks: u32) -> ServiceRequest {
    ServiceRequest { spec, tasks }
}

fn counts(p: &Placement, n: usize) -> Vec<u32> {
    let mut v = vec![0; n];
    for &(i, c) in &p.assignments {
        v[i] = c;
    }
    v
}

#[test]
fn parses_every_constraint_key() {
    for expr in [
        "node.id==abc",
        "node.hostname != web-1",
        "node.role==manager",
        "node.ip==10.0.0.1",
        "node.ip!=10.0.0.0/8",
        "node.ip==fd00::/8",
        "node.platform.os==linux",
        "node.platform.arch==x86_64",
        "node.labels.zone==east",
        "NODE.Labels.Zone == East",
    ] {
        Constraint::parse(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
    }
}

#[test]
fn malformed_constraints_are_errors_at_service_creation() {
    for expr in [
        "node.role=manager",
        "node.role==",
        "==manager",
        "node.color==red",
        "engine.labels.x==y",
        "node.labels.==y",
        "node.ip==10.0.0.300",
        "node.ip==10.0.0.0/33",
        "node.role==boss",
        "node.id==a==b",
    ] {
        let err = replicated("web").with_constraints(&[expr]).unwrap_err();
        assert!(
            matches!(err, SpecError::InvalidConstraint { .. }),
            "{expr}: {err}"
        );
        assert!(err.to_string().contains(expr), "{err}");
    }
    assert!(replicated("web")
        .with_preferences(&["spread=engine.labels.zone"])
        .is_err());
    assert!(replicated("web")
        .with_preferences(&["pack=node.labels.zone"])
        .is_err());
    assert!(ServiceSpec::new("", Mode::Global).is_err());
    assert!(replicated("web").with_max_replicas_per_node(0).is_err());
}

#[test]
fn constraint_matching_rules() {
    let mut n = node("Node-1").with_label("zone", "East");
    n.hostname = "Web-1".into();
    n.ip = "10.1.2.3".parse::<IpAddr>().unwrap();
    n.platform = Platform::new("Linux", "x86_64");
    let m = |e: &str| Constraint::parse(e).unwrap().matches(&n);
    assert!(m("node.id==node-1"));
    assert!(m("node.hostname==web-1"));
    assert!(m("node.role==worker") && !m("node.role==manager"));
    assert!(m("node.ip==10.1.2.3") && m("node.ip==10.0.0.0/8") && !m("node.ip==10.2.0.0/16"));
    assert!(m("node.ip!=192.168.0.0/16") && !m("node.ip==fd00::/8"));
    assert!(m("node.ip==0.0.0.0/0"));
    assert!(m("node.platform.os==linux") && m("node.platform.arch==amd64"));
    // Labels are case-sensitive.
    assert!(m("node.labels.zone==East") && !m("node.labels.zone==east"));
    assert!(!m("node.labels.Zone==East"));
    // Missing label: `!=` passes, `==` fails.
    assert!(m("node.labels.disk!=ssd") && !m("node.labels.disk==ssd"));
}

#[test]
fn explanation_text_counts_nodes_per_filter() {
    let mut e = Explanation::default();
    for _ in 0..3 {
        e.add(Filter::Resources);
    }
    for _ in 0..4 {
        e.add(Filter::Constraints);
    }
    assert_eq!(
        e.to_string(),
        "no suitable node (insufficient resources on 3 nodes; scheduling constraints not satisfied on 4 nodes)"
    );
    let mut one = Explanation::default();
    one.add(Filter::MaxReplicas);
    assert_eq!(
        one.to_string(),
        "no suitable node (max replicas per node limit exceeded on 1 node)"
    );
    assert_eq!(
        Explanation::default().to_string(),
        "no suitable node (no nodes in the cluster)"
    );
}

#[test]
fn tasks_go_only_to_nodes_with_their_runtime_and_the_explanation_names_it() {
    let mut nodes: Vec<Node> = ["a", "b", "c", "d"].iter().map(|id| node(id)).collect();
    nodes[3].runtimes.push("container");
    nodes[0].availability = Availability::Drain;
    let s = Scheduler::new(nodes);
    let p = s.schedule(&request(replicated("web").with_runtime("container"), 3));
    assert_eq!(counts(&p, 4), vec![0, 0, 0, 3]);
    let p = s.schedule(&request(
        replicated("db")
            .with_runtime("container")
            .with_max_replicas_per_node(1)
            .unwrap(),
        2,
    ));
    assert_eq!(counts(&p, 4), vec![0, 0, 0, 1]);
    assert_eq!(
        p.pending.unwrap().explanation.to_string(),
        "no suitable node (node not available for new tasks on 1 node; runtime \"container\" not available on 2 nodes; max replicas per node limit exceeded on 1 node)"
    );
    let p = s.schedule(&request(replicated("proc").with_runtime("process"), 3));
    assert_eq!(counts(&p, 4), vec![0, 1, 1, 1]);
}

#[test]
fn spreads_evenly_then_by_total_then_by_id() {
    let mut nodes: Vec<Node> = ["c", "a", "b"].iter().map(|id| node(id)).collect();
    nodes[0].tasks_by_service.insert("other".into(), 5);
    let s = Scheduler::new(nodes);
    let p = s.schedule(&request(replicated("web"), 2));
    assert_eq!(counts(&p, 3), vec![0, 1, 1]);
    let p = s.schedule(&request(replicated("api"), 7));
    assert_eq!(p.assigned(), 7);
    let c = counts(&p, 3);
    assert!(
        c.iter().max().unwrap() - c.iter().min().unwrap() <= 1,
        "{c:?}"
    );
    assert!(p.pending.is_none());
}

#[test]
fn filters_and_explanations() {
    let mut nodes: Vec<Node> = (0..6).map(|i| node(&format!("n{i}"))).collect();
    nodes[0].state = NodeState::Down;
    nodes[1].availability = Availability::Drain;
    nodes[2].reserved = Resources::new(3_900, 0);
    nodes[3].labels.insert("disk".into(), "hdd".into());
    nodes[4].platform = Platform::new("windows", "amd64");
    nodes[5].used_ports.insert(8080);
    let spec = replicated("web")
        .with_constraints(&["node.labels.disk!=hdd"])
        .unwrap()
        .with_reservation(Resources::new(500, GIB))
        .with_platforms(vec![Platform::new("linux", "")])
        .with_host_ports(vec![8080]);
    let s = Scheduler::new(nodes);
    let p = s.schedule(&request(spec, 2));
    assert_eq!(p.assigned(), 0);
    let pending = p.pending.unwrap();
    assert_eq!(pending.tasks, 2);
    assert_eq!(
        pending.explanation.to_string(),
        "no suitable node (node not available for new tasks on 2 nodes; insufficient resources on 1 node; \
         scheduling constraints not satisfied on 1 node; unsupported platform on 1 node; \
         host-mode port already in use on 1 node)"
    );
}

#[test]
fn resources_are_never_overcommitted() {
    let s = Scheduler::new(vec![node("a"), node("b")]);
    let spec = replicated("big").with_reservation(Resources::new(1_500, GIB));
    let p = s.schedule(&request(spec, 10));
    assert_eq!(p.assigned(), 4);
    assert_eq!(p.pending.as_ref().unwrap().tasks, 6);
    assert_eq!(
        p.pending.unwrap().explanation.to_string(),
        "no suitable node (insufficient resources on 2 nodes)"
    );
    for i in 0..2 {
        assert_eq!(s.usage(i).reserved, Resources::new(3_000, 2 * GIB));
    }
}

#[test]
fn host_ports_limit_one_task_per_node() {
    let s = Scheduler::new(vec![node("a"), node("b"), node("c")]);
    let p = s.schedule(&request(replicated("lb").with_host_ports(vec![80, 443]), 4));
    assert_eq!(counts(&p, 3), vec![1, 1, 1]);
    assert_eq!(
        p.pending.unwrap().explanation.to_string(),
        "no suitable node (host-mode port already in use on 3 nodes)"
    );
    // Another service wanting one of those ports gets nothing; a failed claim leaves no port behind.
    let p = s.schedule(&request(
        replicated("other").with_host_ports(vec![81, 443]),
        1,
    ));
    assert_eq!(p.assigned(), 0);
    let p = s.schedule(&request(replicated("third").with_host_ports(vec![81]), 3));
    assert_eq!(p.assigned(), 3);
}

/// Swarm docs: `--placement-pref spread=node.labels.datacenter` with three zones of unequal
/// size splits the replicas evenly across zones, not across nodes.
#[test]
fn swarm_example_three_zones_unequal() {
    let mut nodes = Vec::new();
    for (zone, n) in [("east", 1), ("south", 2), ("west", 3)] {
        for i in 0..n {
            nodes.push(node(&format!("{zone}-{i}")).with_label("zone", zone));
        }
    }
    nodes.push(node("nolabel"));
    let s = Scheduler::new(nodes.clone());
    let spec = replicated("web")
        .with_preferences(&["spread=node.labels.zone"])
        .unwrap();
    let p = s.schedule(&request(spec, 9));
    let c = counts(&p, nodes.len());
    let zone_total = |z: &str| -> u32 {
        nodes
            .iter()
            .zip(&c)
            .filter(|(n, _)| n.id.starts_with(z))
            .map(|(_, &k)| k)
            .sum()
    };
    // Four groups (3 zones + unlabelled): 9 = 3+2+2+2.
    let mut per_group = [
        zone_total("east"),
        zone_total("south"),
        zone_total("west"),
        zone_total("nolabel"),
    ];
    per_group.sort_unstable();
    assert_eq!(per_group, [2, 2, 2, 3]);
    assert!(
        c[0] >= 2,
        "the single east node carries the whole east share: {c:?}"
    );
}

#[test]
fn full_group_gives_its_share_to_others() {
    let mut nodes = vec![
        node("a1").with_label("zone", "a"),
        node("b1").with_label("zone", "b"),
        node("b2").with_label("zone", "b"),
    ];
    nodes[0].reserved = Resources::new(4_000, 0); // zone a has no room
    let s = Scheduler::new(nodes);
    let spec = replicated("web")
        .with_preferences(&["spread=node.labels.zone"])
        .unwrap()
        .with_reservation(Resources::new(100, 0));
    let p = s.schedule(&request(spec, 6));
    assert_eq!(counts(&p, 3), vec![0, 3, 3]);
    assert!(p.pending.is_none());
}

#[test]
fn nested_preferences() {
    let mut nodes = Vec::new();
    for dc in ["dc1", "dc2"] {
        for rack in ["r1", "r2", "r3"] {
            nodes.push(
                node(&format!("{dc}-{rack}"))
                    .with_label("dc", dc)
                    .with_label("rack", rack),
            );
        }
    }
    nodes.push(
        node("dc2-r1-b")
            .with_label("dc", "dc2")
            .with_label("rack", "r1"),
    );
    let s = Scheduler::new(nodes.clone());
    let spec = replicated("db")
        .with_preferences(&["spread=node.labels.dc", "spread=node.labels.rack"])
        .unwrap();
    let p = s.schedule(&request(spec, 12));
    let c = counts(&p, nodes.len());
    assert_eq!(c[..3].iter().sum::<u32>(), 6);
    assert_eq!(c[..3], [2, 2, 2]);
    // In dc2 each rack gets 2, rack r1's two nodes share theirs.
    assert_eq!(c[3] + c[6], 2);
    assert_eq!((c[4], c[5]), (2, 2));
}

/// Swarm docs: `--constraint node.role==manager`.
#[test]
fn swarm_example_managers_only() {
    let mut nodes: Vec<Node> = (0..5).map(|i| node(&format!("n{i}"))).collect();
    nodes[1].role = Role::Manager;
    nodes[3].role = Role::Manager;
    let s = Scheduler::new(nodes);
    let spec = replicated("redis")
        .with_constraints(&["node.role==manager"])
        .unwrap();
    let p = s.schedule(&request(spec, 3));
    assert_eq!(counts(&p, 5), vec![0, 2, 0, 1, 0]);
}

/// Swarm docs: `--replicas-max-per-node 1` with more replicas than nodes leaves the rest pending.
#[test]
fn swarm_example_max_replicas_per_node() {
    let s = Scheduler::new(vec![node("a"), node("b"), node("c")]);
    let spec = replicated("web").with_max_replicas_per_node(1).unwrap();
    let p = s.schedule(&request(spec, 5));
    assert_eq!(counts(&p, 3), vec![1, 1, 1]);
    let pending = p.pending.unwrap();
    assert_eq!(pending.tasks, 2);
    assert_eq!(
        pending.explanation.to_string(),
        "no suitable node (max replicas per node limit exceeded on 3 nodes)"
    );
}

#[test]
fn max_replicas_counts_existing_tasks() {
    let mut nodes = vec![node("a"), node("b")];
    nodes[0].tasks_by_service.insert("web".into(), 2);
    let s = Scheduler::new(nodes);
    let spec = replicated("web").with_max_replicas_per_node(2).unwrap();
    let p = s.schedule(&request(spec, 3));
    assert_eq!(counts(&p, 2), vec![0, 2]);
    assert_eq!(p.pending.unwrap().tasks, 1);
}

#[test]
fn global_mode_covers_eligible_nodes_without_a_task() {
    let mut nodes: Vec<Node> = (0..5).map(|i| node(&format!("n{i}"))).collect();
    nodes[0].availability = Availability::Pause;
    nodes[1].tasks_by_service.insert("agent".into(), 1);
    nodes[2].reserved = Resources::new(4_000, 0);
    let s = Scheduler::new(nodes);
    let spec = ServiceSpec::new("agent", Mode::Global)
        .unwrap()
        .with_reservation(Resources::new(100, 0));
    let p = s.schedule(&request(spec, 0));
    assert_eq!(counts(&p, 5), vec![0, 0, 0, 1, 1]);
    let pending = p.pending.unwrap();
    assert_eq!(pending.tasks, 1);
    assert_eq!(pending.explanation.count(Filter::Resources), 1);
}

#[test]
fn no_nodes_and_zero_tasks() {
    let s = Scheduler::new(Vec::new());
    let p = s.schedule(&request(replicated("web"), 2));
    assert_eq!(
        p.pending.unwrap().explanation.to_string(),
        "no suitable node (no nodes in the cluster)"
    );
    let s = Scheduler::new(vec![node("a")]);
    let p = s.schedule(&request(replicated("web"), 0));
    assert!(p.assignments.is_empty() && p.pending.is_none());
}

#[test]
fn batch_rejects_duplicate_services_and_keeps_order() {
    let s = Scheduler::new((0..4).map(|i| node(&format!("n{i}"))).collect());
    let reqs = vec![request(replicated("a"), 1), request(replicated("a"), 1)];
    assert_eq!(
        s.schedule_batch(&reqs, 2),
        Err(ScheduleError::DuplicateService("a".into()))
    );
    let reqs: Vec<_> = (0..20)
        .map(|i| request(replicated(&format!("s{i}")), 3))
        .collect();
    let out = s.schedule_batch(&reqs, 4).unwrap();
    for (i, p) in out.iter().enumerate() {
        assert_eq!(p.service, format!("s{i}"));
        assert_eq!(p.assigned(), 3);
    }
}

#[test]
fn rebalance_after_nodes_join() {
    let mut nodes = vec![node("a"), node("b"), node("c"), node("d")];
    nodes[0].tasks_by_service.insert("web".into(), 4);
    nodes[1].tasks_by_service.insert("web".into(), 4);
    let spec = replicated("web");
    let moves = rebalance(&nodes, &spec, 100);
    assert_eq!(moves.len(), 4);
    let mut c = [4i32, 4, 0, 0];
    for m in &moves {
        c[m.from] -= 1;
        c[m.to] += 1;
    }
    assert_eq!(c, [2, 2, 2, 2]);
    assert_eq!(rebalance(&nodes, &spec, 3).len(), 3);
    assert!(rebalance(&nodes, &spec, 0).is_empty());
}

#[test]
fn rebalance_respects_preferences_and_resources() {
    let mut nodes = vec![
        node("a1").with_label("zone", "a"),
        node("a2").with_label("zone", "a"),
        node("b1").with_label("zone", "b"),
        node("b2").with_label("zone", "b"),
    ];
    nodes[0].tasks_by_service.insert("web".into(), 3);
    nodes[1].tasks_by_service.insert("web".into(), 3);
    // b2 has no room.
    nodes[3].reserved = Resources::new(4_000, 0);
    let spec = replicated("web")
        .with_preferences(&["spread=node.labels.zone"])
        .unwrap()
        .with_reservation(Resources::new(1_000, 0));
    let moves = rebalance(&nodes, &spec, 100);
    let mut c = [3i32, 3, 0, 0];
    for m in &moves {
        c[m.from] -= 1;
        c[m.to] += 1;
    }
    // b1 can take at most 4 tasks of 1000 millicores; zones end 3/3.
    assert_eq!(c, [2, 1, 3, 0], "{moves:?}");
    assert_eq!(moves.len(), 3);
}

#[test]
fn rebalance_is_a_no_op_when_balanced() {
    let mut nodes = vec![node("a"), node("b")];
    nodes[0].tasks_by_service.insert("web".into(), 2);
    nodes[1].tasks_by_service.insert("web".into(), 1);
    assert!(rebalance(&nodes, &replicated("web"), 10).is_empty());
    assert!(rebalance(&nodes, &ServiceSpec::new("web", Mode::Global).unwrap(), 10).is_empty());
}

#[test]
fn scheduler_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scheduler>();
}
