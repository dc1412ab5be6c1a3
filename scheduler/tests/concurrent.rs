//! Many threads, overlapping services, tight resources: totals never exceed capacity and every
//! task is placed or explained.

use std::sync::atomic::{AtomicU32, Ordering};

use shoal_scheduler::*;

fn tight_cluster() -> Vec<Node> {
    (0..40)
        .map(|i| {
            let mut n = Node::new(
                &format!("n{i:02}"),
                Resources::new(2_000 + 250 * (i % 4), (1 + i % 3) << 30),
            )
            .with_label("zone", ["a", "b", "c"][(i % 3) as usize]);
            if i % 5 == 0 {
                n.role = Role::Manager;
            }
            n
        })
        .collect()
}

fn services() -> Vec<ServiceRequest> {
    (0..300)
        .map(|i| {
            let mut spec = ServiceSpec::new(
                &format!("svc-{i}"),
                if i % 17 == 0 {
                    Mode::Global
                } else {
                    Mode::Replicated
                },
            )
            .unwrap()
            .with_reservation(Resources::new(100 + (i % 7) * 90, ((i % 5) + 1) << 26));
            if i % 3 == 0 {
                spec = spec.with_constraints(&["node.labels.zone!=c"]).unwrap();
            }
            if i % 4 == 0 {
                spec = spec.with_preferences(&["spread=node.labels.zone"]).unwrap();
            }
            if i % 11 == 0 {
                spec = spec.with_host_ports(vec![8000 + (i % 3) as u16]);
            }
            if i % 13 == 0 {
                spec = spec.with_max_replicas_per_node(1).unwrap();
            }
            ServiceRequest {
                spec,
                tasks: 5 + (i as u32 % 20),
            }
        })
        .collect()
}

fn check(nodes: &[Node], reqs: &[ServiceRequest], out: &[Placement], s: &Scheduler) {
    let mut cpu = vec![0u64; nodes.len()];
    let mut mem = vec![0u64; nodes.len()];
    let mut pending_total = 0;
    for (req, p) in reqs.iter().zip(out) {
        for &(i, c) in &p.assignments {
            cpu[i] += req.spec.reservation().millicores * u64::from(c);
            mem[i] += req.spec.reservation().memory_bytes * u64::from(c);
        }
        if req.spec.mode() == Mode::Replicated {
            assert_eq!(
                p.assigned() + p.pending.as_ref().map_or(0, |x| x.tasks),
                req.tasks,
                "{}",
                req.spec.id()
            );
        }
        if let Some(pending) = &p.pending {
            pending_total += pending.tasks;
            assert!(pending
                .explanation
                .to_string()
                .starts_with("no suitable node ("));
            match req.spec.mode() {
                Mode::Replicated => assert_eq!(pending.explanation.nodes() as usize, nodes.len()),
                Mode::Global => assert_eq!(pending.explanation.nodes(), pending.tasks),
            }
        }
    }
    assert!(pending_total > 0, "the cluster is meant to be too small");
    for (i, n) in nodes.iter().enumerate() {
        assert!(
            cpu[i] <= n.total.millicores,
            "cpu over-committed on {}",
            n.id
        );
        assert!(
            mem[i] <= n.total.memory_bytes,
            "memory over-committed on {}",
            n.id
        );
        assert_eq!(s.usage(i).reserved, Resources::new(cpu[i], mem[i]));
    }
}

#[test]
fn batch_on_many_threads_never_overcommits() {
    let nodes = tight_cluster();
    let reqs = services();
    for threads in [2, 8, 16] {
        let s = Scheduler::new(nodes.clone());
        let out = s.schedule_batch(&reqs, threads).unwrap();
        check(&nodes, &reqs, &out, &s);
    }
}

#[test]
fn independent_callers_share_one_scheduler() {
    let nodes = tight_cluster();
    let reqs = services();
    let s = Scheduler::new(nodes.clone());
    let next = AtomicU32::new(0);
    let mut out: Vec<Option<Placement>> = vec![None; reqs.len()];
    let results: Vec<Vec<(usize, Placement)>> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some(r) = reqs.get(i) else { break };
                        mine.push((i, s.schedule(r)));
                    }
                    mine
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, p) in results.into_iter().flatten() {
        out[i] = Some(p);
    }
    let out: Vec<Placement> = out.into_iter().map(Option::unwrap).collect();
    check(&nodes, &reqs, &out, &s);
}

#[test]
fn one_thread_is_deterministic() {
    let nodes = tight_cluster();
    let reqs = services();
    let a = Scheduler::new(nodes.clone())
        .schedule_batch(&reqs, 1)
        .unwrap();
    let b = Scheduler::new(nodes).schedule_batch(&reqs, 1).unwrap();
    assert_eq!(a, b);
}
