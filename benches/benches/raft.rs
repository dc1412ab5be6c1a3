//! criterion benchmarks of the Raft core (`cargo bench -p shoal-benches`): commit rounds in an
//! in-process 3-node cluster, and WAL appends with and without fsync.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use shoal_benches::LocalCluster;
use shoal_raft::wal::{Wal, WalOptions};
use shoal_raft::{Entry, Payload, Storage, WriteBatch};

fn commit_rounds(c: &mut Criterion) {
    let mut g = c.benchmark_group("raft_commit");
    for batch in [1usize, 64, 1024] {
        let mut cluster = LocalCluster::new(3, |cfg| {
            cfg.max_entries_per_msg = 8192;
            cfg.max_uncommitted_entries = 1 << 20;
            cfg.snapshot_threshold = 100_000;
        });
        cluster.elect_first();
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("3_nodes_batch_{batch}"), |b| {
            b.iter(|| {
                cluster.applied.clear();
                cluster.nodes[0]
                    .propose_batch(vec![Vec::new(); batch])
                    .expect("leader");
                cluster.pump_instant();
                assert_eq!(cluster.applied.len(), batch);
            })
        });
    }
    g.finish();
}

fn wal_append(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal");
    for (name, fsync) in [("append_256_no_fsync", false), ("append_256_fsync", true)] {
        let dir = tempfile::tempdir_in(".").expect("temp dir");
        let (mut wal, _, _) = Wal::open(
            dir.path(),
            WalOptions {
                fsync,
                ..Default::default()
            },
        )
        .expect("open");
        let mut next = 1u64;
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(256));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let entries: Vec<Entry> = (0..256)
                        .map(|k| Entry {
                            term: 1,
                            index: next + k,
                            payload: Payload::Command(vec![0u8; 64]),
                        })
                        .collect();
                    next += 256;
                    seq += 1;
                    WriteBatch {
                        seq,
                        entries,
                        ..Default::default()
                    }
                },
                |batch| {
                    wal.write(&batch).expect("write");
                    wal.sync().expect("sync");
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, commit_rounds, wal_append);
criterion_main!(benches);
