//! criterion benchmarks of the spread scheduler: one service of 10,000 replicas on 1,000 nodes,
//! and 100 services with a constraint and a zone preference.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shoal_scheduler::{Mode, Node, Resources, Scheduler, ServiceRequest, ServiceSpec};

fn snapshot(n: usize) -> Vec<Node> {
    (0..n)
        .map(|i| {
            Node::new(
                &format!("node{i:05}"),
                Resources {
                    millicores: 1 << 40,
                    memory_bytes: 1 << 50,
                },
            )
            .with_label("zone", ["a", "b", "c"][i % 3])
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler");
    let one = vec![ServiceRequest {
        spec: ServiceSpec::new("web", Mode::Replicated).expect("id"),
        tasks: 10_000,
    }];
    g.throughput(Throughput::Elements(10_000));
    g.bench_function("10k_tasks_1k_nodes", |b| {
        b.iter_batched(
            || Scheduler::new(snapshot(1000)),
            |s| s.schedule_batch(&one, 1).expect("placed"),
            BatchSize::LargeInput,
        )
    });
    let many: Vec<ServiceRequest> = (0..100)
        .map(|i| ServiceRequest {
            spec: ServiceSpec::new(&format!("svc{i}"), Mode::Replicated)
                .expect("id")
                .with_constraints(&["node.labels.zone!=c"])
                .expect("constraint")
                .with_preferences(&["spread=node.labels.zone"])
                .expect("preference"),
            tasks: 100,
        })
        .collect();
    g.bench_function(
        "100_services_x_100_tasks_1k_nodes_constraint_and_preference",
        |b| {
            b.iter_batched(
                || Scheduler::new(snapshot(1000)),
                |s| s.schedule_batch(&many, 1).expect("placed"),
                BatchSize::LargeInput,
            )
        },
    );
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
