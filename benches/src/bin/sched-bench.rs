//! `sched-bench --nodes N --tasks T [--services S] [--threads K]`: places T tasks of S services
//! (each with a constraint and a zone spread preference when S > 1) on N nodes spread over three
//! zones of unequal size, and prints
//! `{"nodes":N,"tasks":T,"services":S,"threads":K,"secs":X,"placements_per_s":Y,"max_imbalance":Z}`.
//! `secs` is the time of the placement itself (the snapshot is built beforehand); the best of
//! three runs on fresh snapshots is reported. `max_imbalance` is the largest difference between
//! two eligible nodes of the same zone in one service's task counts.

use serde_json::json;
use shoal_scheduler::{Mode, Node, Resources, Scheduler, ServiceRequest, ServiceSpec};
use std::time::Instant;

fn usage(msg: &str) -> ! {
    eprintln!("sched-bench: {msg}");
    eprintln!("usage: sched-bench --nodes N --tasks T [--services S] [--threads K]");
    std::process::exit(2)
}

fn zone(i: usize) -> &'static str {
    // Three zones of unequal size: 50 %, 30 %, 20 %.
    match i % 10 {
        0..=4 => "a",
        5..=7 => "b",
        _ => "c",
    }
}

fn nodes(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            let mut node = Node::new(
                &format!("node{i:06}"),
                Resources {
                    millicores: 1 << 40,
                    memory_bytes: 1 << 50,
                },
            )
            .with_label("zone", zone(i));
            if i % 4 == 0 {
                node = node.with_label("disk", "ssd");
            }
            node
        })
        .collect()
}

fn requests(tasks: usize, services: usize) -> Vec<ServiceRequest> {
    let per = tasks / services;
    let extra = tasks % services;
    (0..services)
        .map(|s| {
            let mut spec = ServiceSpec::new(&format!("svc{s}"), Mode::Replicated)
                .expect("valid id")
                .with_reservation(Resources {
                    millicores: 10,
                    memory_bytes: 1 << 20,
                });
            if services > 1 {
                let constraint = if s % 2 == 0 {
                    "node.labels.disk!=hdd"
                } else {
                    "node.labels.disk==ssd"
                };
                spec = spec
                    .with_constraints(&[constraint])
                    .expect("valid constraint")
                    .with_preferences(&["spread=node.labels.zone"])
                    .expect("valid preference");
            }
            ServiceRequest {
                spec,
                tasks: (per + usize::from(s < extra)) as u32,
            }
        })
        .collect()
}

fn main() {
    let (mut n, mut t, mut s, mut k) = (1000usize, 100_000usize, 1usize, 1usize);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v: usize = it
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| usage(&format!("{a} needs a number")));
        match a.as_str() {
            "--nodes" => n = v,
            "--tasks" => t = v,
            "--services" => s = v,
            "--threads" => k = v,
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    if n == 0 || s == 0 || k == 0 || t < s {
        usage("need nodes, services and threads >= 1 and at least one task per service");
    }
    let reqs = requests(t, s);
    let mut best = f64::INFINITY;
    let mut placements = Vec::new();
    for _ in 0..3 {
        let snapshot = nodes(n);
        let sched = Scheduler::new(snapshot);
        let start = Instant::now();
        let p = sched.schedule_batch(&reqs, k).expect("distinct services");
        let secs = start.elapsed().as_secs_f64();
        if secs < best {
            best = secs;
            placements = p;
        }
    }
    let placed: u64 = placements.iter().map(|p| u64::from(p.assigned())).sum();
    let pending: u64 = placements
        .iter()
        .filter_map(|p| p.pending.as_ref().map(|x| u64::from(x.tasks)))
        .sum();
    // Imbalance within each zone among the service's eligible nodes.
    let snapshot = nodes(n);
    let mut max_imbalance = 0u32;
    for (p, r) in placements.iter().zip(&reqs) {
        let mut counts = vec![0u32; n];
        for &(i, c) in &p.assignments {
            counts[i] = c;
        }
        for z in ["a", "b", "c"] {
            let eligible = snapshot.iter().enumerate().filter(|(_, node)| {
                node.labels.get("zone").map(String::as_str) == Some(z)
                    && r.spec.constraints().iter().all(|c| c.matches(node))
            });
            let (mut lo, mut hi) = (u32::MAX, 0);
            for (i, _) in eligible {
                lo = lo.min(counts[i]);
                hi = hi.max(counts[i]);
            }
            if hi >= lo {
                max_imbalance = max_imbalance.max(hi - lo);
            }
        }
    }
    println!(
        "{}",
        json!({
            "nodes": n,
            "tasks": t,
            "services": s,
            "threads": k,
            "secs": (best * 1e6).round() / 1e6,
            "placements_per_s": (placed as f64 / best).round(),
            "max_imbalance": max_imbalance,
            "placed": placed,
            "pending": pending,
        })
    );
}
