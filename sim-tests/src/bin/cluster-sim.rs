//! `cluster-sim --seeds N [--start S] [--seconds T] [-v]`: five real agents on turmoil's
//! simulated network under partitions and crashes while nodes are promoted, demoted and
//! updated and services are created, scaled, updated and removed; one line per seed (failing
//! or with its service figures), the totals (with the contact checks made and skipped),
//! then `N passed, M failed`.

use shoal_sim::cluster_sim::{run, ClusterSimOptions};

fn usage(msg: &str) -> ! {
    eprintln!("cluster-sim: {msg}");
    eprintln!("usage: cluster-sim --seeds N [--start S] [--seconds T] [-v]");
    std::process::exit(2)
}

fn main() {
    // `SHOAL_LOG=shoal_agent=info` shows what the agents do (turmoil names the host in spans).
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let (mut seeds, mut start, mut secs, mut verbose) = (20u64, 0u64, 30u64, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--seeds" => seeds = v().parse().unwrap_or_else(|_| usage("--seeds: a count")),
            "--start" | "--seed" => {
                start = v().parse().unwrap_or_else(|_| usage("--start: an integer"));
                if a == "--seed" {
                    seeds = 1;
                }
            }
            "--seconds" => secs = v().parse().unwrap_or_else(|_| usage("--seconds: seconds")),
            "-v" | "--verbose" => verbose = true,
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    if secs == 0 || secs > 3600 {
        usage("--seconds must be in 1..=3600");
    }
    let (mut passed, mut failed) = (0, 0);
    let mut totals = (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut after_restart, mut after_heal, mut slowest) = (0usize, 0usize, 0f64);
    let mut skipped = std::collections::BTreeMap::<String, usize>::new();
    // Services created, updated, removed, unacknowledged; tasks started; machine crashes.
    let mut svc = (0usize, 0usize, 0usize, 0usize, 0u64, 0usize);
    let mut slowest_converge = 0f64;
    for seed in start..start.saturating_add(seeds) {
        let r = run(&ClusterSimOptions {
            seed,
            chaos_secs: secs,
        });
        totals.0 += r.acked_updates;
        totals.1 += r.role_changes;
        totals.2 += r.crashes;
        totals.3 += r.partitions;
        totals.4 += r.terms_with_leader;
        svc.0 += r.services_created;
        svc.1 += r.services_updated;
        svc.2 += r.services_removed;
        svc.3 += r.services_unacked;
        svc.4 += r.tasks_started;
        svc.5 += r.machine_crashes;
        slowest_converge = slowest_converge.max(r.converge_s);
        after_restart += r.contact_after_restart;
        after_heal += r.contact_after_heal;
        slowest = slowest.max(r.contact_slowest_s);
        for (why, n) in &r.contact_skipped {
            *skipped.entry(why.clone()).or_default() += n;
        }
        match &r.failure {
            None => {
                passed += 1;
                if verbose {
                    println!("seed {seed}: ok ({r:?})");
                } else {
                    println!(
                        "seed {seed}: ok (services {} created, {} updated, {} removed, {} \
                         unacknowledged; {} tasks started, {} running at the end; converged in \
                         {:.1} s)",
                        r.services_created,
                        r.services_updated,
                        r.services_removed,
                        r.services_unacked,
                        r.tasks_started,
                        r.tasks_running,
                        r.converge_s
                    );
                }
            }
            Some(f) => {
                failed += 1;
                println!(
                    "seed {seed}: FAILED: {f}  (replay: cargo run --release -p shoal-sim --bin cluster-sim -- --seed {seed} --seconds {secs} -v)"
                );
            }
        }
    }
    eprintln!(
        "totals: {} acknowledged updates, {} role changes, {} crashes, {} partitions, {} terms with a leader",
        totals.0, totals.1, totals.2, totals.3, totals.4
    );
    println!(
        "services: {} created, {} updated, {} removed, {} unacknowledged; {} tasks started; \
         {} machine crashes; slowest convergence {slowest_converge:.1} s",
        svc.0, svc.1, svc.2, svc.3, svc.4, svc.5
    );
    let skipped_total: usize = skipped.values().sum();
    let reasons = skipped
        .iter()
        .map(|(why, n)| format!("{n} {why}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "contact checks: {} made ({after_restart} after a restart, {after_heal} after a repair; \
         slowest {slowest:.3} s), {skipped_total} skipped ({reasons})",
        after_restart + after_heal
    );
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
