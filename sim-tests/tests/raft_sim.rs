//! Runs the randomized Raft simulation over many seeds as part of the test suite.
//! `SHOAL_SIM_SEEDS` (default 300), `SHOAL_SIM_WAL_SEEDS` (default 50, on the real WAL) and
//! `SHOAL_SIM_START` (default 0) choose the seeds.

use shoal_sim::raft_sim::{run, SimOptions};
use shoal_sim::sim_storage::StorageKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn raft_simulation_seeds_are_safe_linearizable_and_live() {
    let seeds = env_u64("SHOAL_SIM_SEEDS", 300);
    let start = env_u64("SHOAL_SIM_START", 0);
    let next = AtomicU64::new(start);
    let failures = Mutex::new(Vec::new());
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= start + seeds {
                    break;
                }
                let out = run(SimOptions::new(seed));
                if let Some(f) = out.failure {
                    failures.lock().unwrap().push(format!(
                        "seed {seed} FAILED: {f} (replay: cargo run --release -p shoal-sim --bin raft-sim -- --seed {seed} -v)"
                    ));
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn raft_simulation_on_the_real_wal() {
    let seeds = env_u64("SHOAL_SIM_WAL_SEEDS", 50);
    let start = env_u64("SHOAL_SIM_START", 0);
    let mut failures = Vec::new();
    for seed in start..start + seeds {
        let mut opts = SimOptions::new(seed);
        opts.storage = StorageKind::Wal;
        if let Some(f) = run(opts).failure {
            failures.push(format!(
                "seed {seed} FAILED: {f} (replay: cargo run --release -p shoal-sim --bin raft-sim -- --seed {seed} --storage wal -v)"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let a = run(SimOptions::new(7));
    let b = run(SimOptions::new(7));
    assert_eq!(a.history, b.history);
    assert_eq!(a.failure, b.failure);
    assert!(a.stats.acked_writes > 0, "the workload made progress");
}
