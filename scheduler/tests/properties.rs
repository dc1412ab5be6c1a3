//! Property tests: filters always honoured, no over-commit, even spread, determinism, global
//! coverage.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shoal_scheduler::*;

#[derive(Debug, Clone)]
struct NodeGen {
    manager: bool,
    ready: bool,
    availability: u8,
    zone: Option<u8>,
    rack: Option<u8>,
    windows: bool,
    cpu: u64,
    memory: u64,
    reserved_pct: u64,
    port80: bool,
    existing: u32,
}

fn node_gen() -> impl Strategy<Value = NodeGen> {
    (
        any::<bool>(),
        prop::bool::weighted(0.85),
        prop::sample::select(vec![0u8, 0, 0, 0, 1, 2]),
        prop::option::weighted(0.8, 0u8..3),
        prop::option::weighted(0.8, 0u8..2),
        prop::bool::weighted(0.1),
        (1_000u64..8_000, 1u64..16),
        0u64..100,
        prop::bool::weighted(0.2),
        0u32..3,
    )
        .prop_map(
            |(
                manager,
                ready,
                availability,
                zone,
                rack,
                windows,
                (cpu, memory),
                reserved_pct,
                port80,
                existing,
            )| NodeGen {
                manager,
                ready,
                availability,
                zone,
                rack,
                windows,
                cpu,
                memory,
                reserved_pct,
                port80,
                existing,
            },
        )
}

fn build_nodes(gens: &[NodeGen], pressure: bool) -> Vec<Node> {
    gens.iter()
        .enumerate()
        .map(|(i, g)| {
            let mut n = Node::new(
                &format!("node-{i:02}"),
                Resources::new(g.cpu, g.memory << 30),
            );
            n.role = if g.manager {
                Role::Manager
            } else {
                Role::Worker
            };
            n.state = if g.ready {
                NodeState::Ready
            } else {
                NodeState::Down
            };
            n.availability = [
                Availability::Active,
                Availability::Pause,
                Availability::Drain,
            ][g.availability as usize];
            if let Some(z) = g.zone {
                n.labels.insert("zone".into(), format!("z{z}"));
            }
            if let Some(r) = g.rack {
                n.labels.insert("rack".into(), format!("r{r}"));
            }
            if g.windows {
                n.platform = Platform::new("windows", "amd64");
            }
            if pressure {
                n.reserved = Resources::new(
                    n.total.millicores * g.reserved_pct / 100,
                    n.total.memory_bytes * g.reserved_pct / 100,
                );
                if g.port80 {
                    n.used_ports.insert(80);
                }
                if g.existing > 0 {
                    n.tasks_by_service.insert("svc-0".into(), g.existing);
                }
            }
            n
        })
        .collect()
}

const CONSTRAINTS: &[&str] = &[
    "node.role==manager",
    "node.role!=manager",
    "node.labels.zone==z0",
    "node.labels.zone!=z1",
    "node.labels.rack==r1",
    "node.hostname!=node-03",
    "node.platform.os==linux",
    "node.ip==127.0.0.0/8",
];

#[derive(Debug, Clone)]
struct SvcGen {
    global: bool,
    constraints: Vec<usize>,
    prefs: u8,
    cpu: u64,
    memory: u64,
    max: Option<u32>,
    port: bool,
    tasks: u32,
}

fn svc_gen() -> impl Strategy<Value = SvcGen> {
    (
        prop::bool::weighted(0.2),
        prop::collection::vec(0..CONSTRAINTS.len(), 0..3),
        0u8..3,
        (0u64..2_000, 0u64..4),
        prop::option::weighted(0.3, 1u32..3),
        prop::bool::weighted(0.2),
        0u32..40,
    )
        .prop_map(
            |(global, constraints, prefs, (cpu, memory), max, port, tasks)| SvcGen {
                global,
                constraints,
                prefs,
                cpu,
                memory,
                max,
                port,
                tasks,
            },
        )
}

fn build_services(gens: &[SvcGen], pressure: bool) -> Vec<ServiceRequest> {
    gens.iter()
        .enumerate()
        .map(|(i, g)| {
            let mode = if g.global {
                Mode::Global
            } else {
                Mode::Replicated
            };
            let cons: Vec<&str> = g.constraints.iter().map(|&c| CONSTRAINTS[c]).collect();
            let prefs = ["spread=node.labels.zone", "spread=node.labels.rack"];
            let mut spec = ServiceSpec::new(&format!("svc-{i}"), mode)
                .unwrap()
                .with_constraints(&cons)
                .unwrap()
                .with_preferences(&prefs[..g.prefs as usize])
                .unwrap()
                .with_platforms(vec![Platform::new("linux", "")]);
            if pressure {
                spec = spec.with_reservation(Resources::new(g.cpu, g.memory << 28));
                if let Some(m) = g.max {
                    spec = spec.with_max_replicas_per_node(m).unwrap();
                }
                if g.port {
                    spec = spec.with_host_ports(vec![80]);
                }
            }
            ServiceRequest {
                spec,
                tasks: g.tasks,
            }
        })
        .collect()
}

fn statically_eligible(n: &Node, spec: &ServiceSpec) -> bool {
    n.state == NodeState::Ready
        && n.availability == Availability::Active
        && spec.constraints_match(n)
        && spec.platform_matches(n)
}

/// Checks every hard rule of a batch outcome.
fn check_hard_rules(
    nodes: &[Node],
    reqs: &[ServiceRequest],
    out: &[Placement],
    s: &Scheduler,
) -> Result<(), TestCaseError> {
    let mut reserved: Vec<Resources> = nodes.iter().map(|n| n.reserved).collect();
    let mut ports: Vec<BTreeSet<u16>> = nodes.iter().map(|n| n.used_ports.clone()).collect();
    let mut tasks: Vec<u64> = nodes.iter().map(Node::total_tasks).collect();
    for (req, p) in reqs.iter().zip(out) {
        let spec = &req.spec;
        prop_assert_eq!(&p.service, spec.id());
        for &(i, c) in &p.assignments {
            let n = &nodes[i];
            prop_assert!(c > 0);
            prop_assert!(
                statically_eligible(n, spec),
                "{} placed on ineligible {}",
                spec.id(),
                n.id
            );
            if let Some(max) = spec.max_replicas_per_node() {
                prop_assert!(n.tasks_by_service.get(spec.id()).copied().unwrap_or(0) + c <= max);
            }
            for &port in spec.host_ports() {
                prop_assert!(c == 1);
                prop_assert!(ports[i].insert(port), "port {} reused on {}", port, n.id);
            }
            reserved[i].millicores += spec.reservation().millicores * u64::from(c);
            reserved[i].memory_bytes += spec.reservation().memory_bytes * u64::from(c);
            tasks[i] += u64::from(c);
            if !spec.reservation().is_zero() {
                if spec.reservation().millicores > 0 {
                    prop_assert!(
                        reserved[i].millicores <= n.total.millicores,
                        "cpu over-committed on {}",
                        n.id
                    );
                }
                if spec.reservation().memory_bytes > 0 {
                    prop_assert!(
                        reserved[i].memory_bytes <= n.total.memory_bytes,
                        "memory over-committed on {}",
                        n.id
                    );
                }
            }
        }
        match spec.mode() {
            Mode::Replicated => {
                let pending = p.pending.as_ref().map_or(0, |x| x.tasks);
                prop_assert_eq!(p.assigned() + pending, req.tasks);
            }
            Mode::Global => {
                for &(_, c) in &p.assignments {
                    prop_assert_eq!(c, 1);
                }
            }
        }
        if let Some(pending) = &p.pending {
            prop_assert!(pending.tasks > 0);
            match spec.mode() {
                Mode::Replicated => {
                    prop_assert_eq!(pending.explanation.nodes() as usize, nodes.len())
                }
                Mode::Global => prop_assert_eq!(pending.explanation.nodes(), pending.tasks),
            }
        }
    }
    for (i, r) in reserved.iter().enumerate() {
        prop_assert_eq!(s.usage(i).reserved, *r, "accounting differs on node {}", i);
        prop_assert_eq!(u64::from(s.usage(i).tasks), tasks[i]);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hard_rules_hold_single_and_multi_threaded(
        node_gens in prop::collection::vec(node_gen(), 0..14),
        svc_gens in prop::collection::vec(svc_gen(), 1..6),
        threads in 1usize..5,
    ) {
        let nodes = build_nodes(&node_gens, true);
        let reqs = build_services(&svc_gens, true);
        let s = Scheduler::new(nodes.clone());
        let out = s.schedule_batch(&reqs, threads).unwrap();
        check_hard_rules(&nodes, &reqs, &out, &s)?;
    }

    #[test]
    fn same_input_same_output(
        node_gens in prop::collection::vec(node_gen(), 0..14),
        svc_gens in prop::collection::vec(svc_gen(), 1..6),
    ) {
        let nodes = build_nodes(&node_gens, true);
        let reqs = build_services(&svc_gens, true);
        let a = Scheduler::new(nodes.clone()).schedule_batch(&reqs, 1).unwrap();
        let b = Scheduler::new(nodes).schedule_batch(&reqs, 1).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn without_pressure_spread_is_even_in_every_group(
        node_gens in prop::collection::vec(node_gen(), 0..14),
        svc_gens in prop::collection::vec(svc_gen(), 1..6),
    ) {
        let nodes = build_nodes(&node_gens, false);
        let reqs = build_services(&svc_gens, false);
        let s = Scheduler::new(nodes.clone());
        let out = s.schedule_batch(&reqs, 1).unwrap();
        check_hard_rules(&nodes, &reqs, &out, &s)?;
        for (req, p) in reqs.iter().zip(&out) {
            let spec = &req.spec;
            let eligible: Vec<usize> = (0..nodes.len()).filter(|&i| statically_eligible(&nodes[i], spec)).collect();
            let placed: BTreeMap<usize, u32> = p.assignments.iter().copied().collect();
            let count = |i: &usize| placed.get(i).copied().unwrap_or(0);
            match spec.mode() {
                Mode::Global => {
                    // Global mode covers exactly the eligible nodes.
                    prop_assert_eq!(placed.keys().copied().collect::<Vec<_>>(), eligible);
                    prop_assert!(p.pending.is_none());
                }
                Mode::Replicated => {
                    prop_assert_eq!(p.pending.is_some(), eligible.is_empty() && req.tasks > 0);
                    // Group nodes by their preference label values at every depth.
                    let labels: Vec<String> = spec.preferences().iter().map(|x| x.label.clone()).collect();
                    for depth in 0..=labels.len() {
                        let mut groups: BTreeMap<Vec<Option<String>>, Vec<usize>> = BTreeMap::new();
                        for &i in &eligible {
                            let key: Vec<Option<String>> = labels[..depth].iter().map(|l| nodes[i].labels.get(l).cloned()).collect();
                            groups.entry(key).or_default().push(i);
                        }
                        if depth == labels.len() {
                            // Node level: within a leaf group counts differ by at most one.
                            for members in groups.values() {
                                let c: Vec<u32> = members.iter().map(count).collect();
                                prop_assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1, "{:?}", c);
                            }
                        } else {
                            // Sibling groups (same parent path) hold totals differing by at most one.
                            let mut siblings: BTreeMap<Vec<Option<String>>, Vec<u32>> = BTreeMap::new();
                            let mut children: BTreeMap<Vec<Option<String>>, u32> = BTreeMap::new();
                            for &i in &eligible {
                                let key: Vec<Option<String>> = labels[..=depth].iter().map(|l| nodes[i].labels.get(l).cloned()).collect();
                                *children.entry(key).or_default() += count(&i);
                            }
                            for (key, total) in children {
                                siblings.entry(key[..depth].to_vec()).or_default().push(total);
                            }
                            for totals in siblings.values() {
                                prop_assert!(totals.iter().max().unwrap() - totals.iter().min().unwrap() <= 1, "{:?}", totals);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn rebalance_moves_are_valid_and_restore_spread(
        node_gens in prop::collection::vec(node_gen(), 1..12),
        joined in 0usize..6,
        tasks in 0u32..40,
        max_moves in 0usize..50,
    ) {
        // Place on the first nodes, then add `joined` empty nodes and rebalance.
        let nodes = build_nodes(&node_gens, false);
        let spec = ServiceSpec::new("svc-0", Mode::Replicated).unwrap();
        let s = Scheduler::new(nodes.clone());
        let p = s.schedule(&ServiceRequest { spec: spec.clone(), tasks });
        let mut after = nodes.clone();
        for &(i, c) in &p.assignments {
            after[i].tasks_by_service.insert("svc-0".into(), c);
        }
        for k in 0..joined {
            after.push(Node::new(&format!("joined-{k}"), Resources::new(4_000, 1 << 33)));
        }
        let moves = rebalance(&after, &spec, max_moves);
        prop_assert!(moves.len() <= max_moves);
        let mut c: Vec<i64> = after.iter().map(|n| i64::from(n.tasks_by_service.get("svc-0").copied().unwrap_or(0))).collect();
        for m in &moves {
            prop_assert!(statically_eligible(&after[m.to], &spec));
            c[m.from] -= 1;
            c[m.to] += 1;
            prop_assert!(c[m.from] >= 0);
        }
        let eligible_idx: Vec<usize> = (0..after.len()).filter(|&i| statically_eligible(&after[i], &spec)).collect();
        let before: Vec<i64> = eligible_idx
            .iter()
            .map(|&i| i64::from(after[i].tasks_by_service.get("svc-0").copied().unwrap_or(0)))
            .collect();
        let eligible: Vec<i64> = eligible_idx.iter().map(|&i| c[i]).collect();
        // The fewest moves that reach counts differing by at most one.
        let ideal_moves: i64 = if before.is_empty() { 0 } else {
            let total: i64 = before.iter().sum();
            let n = before.len() as i64;
            let (lo, hi) = (total / n, (total + n - 1) / n);
            let surplus: i64 = before.iter().map(|&x| (x - hi).max(0)).sum();
            let deficit: i64 = before.iter().map(|&x| (lo - x).max(0)).sum();
            surplus.max(deficit)
        };
        if moves.len() < max_moves {
            // Finished: spread restored, with the fewest moves.
            if let (Some(mx), Some(mn)) = (eligible.iter().max(), eligible.iter().min()) {
                prop_assert!(mx - mn <= 1, "{:?}", eligible);
            }
            prop_assert_eq!(moves.len() as i64, ideal_moves);
        } else {
            prop_assert!(moves.len() as i64 <= ideal_moves);
        }
    }
}
