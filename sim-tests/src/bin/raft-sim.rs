//! `raft-sim`: runs seeded randomized schedules of a Raft group under faults and checks safety,
//! linearizability and liveness. Prints one line per failing seed with the command that replays
//! it, then `N passed, M failed`; exits non-zero if any seed failed (an inconclusive
//! linearizability check is a failure).

use shoal_sim::linearizability::write_history;
use shoal_sim::raft_sim::{run, SimOptions, SimOutcome};
use shoal_sim::sim_storage::StorageKind;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

struct Args {
    seeds: u64,
    start: u64,
    history: Option<String>,
    jobs: usize,
    verbose: bool,
    storage: StorageKind,
}

fn usage() -> ! {
    eprintln!(
        "usage: raft-sim --seeds N [--start S] [--jobs J] [--storage mem|wal] [-v]\n       raft-sim --seed S [--history FILE] [--storage mem|wal] [-v]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        seeds: 100,
        start: 0,
        history: None,
        jobs: std::thread::available_parallelism().map_or(1, |n| n.get()),
        verbose: false,
        storage: StorageKind::Mem,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, what: &str| -> u64 {
        match v.as_deref().map(str::parse::<u64>) {
            Some(Ok(n)) => n,
            _ => {
                eprintln!("raft-sim: {what} needs a non-negative integer");
                std::process::exit(2)
            }
        }
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seeds" => a.seeds = num(it.next(), "--seeds"),
            "--start" => a.start = num(it.next(), "--start"),
            "--seed" => {
                a.start = num(it.next(), "--seed");
                a.seeds = 1;
            }
            "--jobs" => a.jobs = num(it.next(), "--jobs").max(1) as usize,
            "--history" => a.history = Some(it.next().unwrap_or_else(|| usage())),
            "-v" | "--verbose" => a.verbose = true,
            "--storage" => {
                a.storage = match it.next().as_deref() {
                    Some("mem") => StorageKind::Mem,
                    Some("wal") => StorageKind::Wal,
                    _ => {
                        eprintln!("raft-sim: --storage takes mem or wal");
                        std::process::exit(2)
                    }
                }
            }
            "-h" | "--help" => usage(),
            other => {
                eprintln!("raft-sim: unknown argument {other:?}");
                usage()
            }
        }
    }
    a
}

fn main() {
    let args = parse();
    let next = AtomicU64::new(args.start);
    let end = args.start.saturating_add(args.seeds);
    let results: Mutex<Vec<SimOutcome>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..args.jobs.min(args.seeds.max(1) as usize) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let mut opts = SimOptions::new(seed);
                opts.verbose = args.verbose;
                opts.storage = args.storage;
                let out = run(opts);
                if let Some(f) = &out.failure {
                    let storage = match args.storage {
                        StorageKind::Mem => "",
                        StorageKind::Wal => " --storage wal",
                    };
                    println!(
                        "seed {seed} FAILED: {f} (replay: cargo run --release -p shoal-sim --bin raft-sim -- --seed {seed}{storage} -v)"
                    );
                }
                results.lock().expect("no poisoning").push(out);
            });
        }
    });
    let mut results = results.into_inner().expect("no poisoning");
    results.sort_by_key(|o| o.seed);
    if let Some(path) = &args.history {
        if let Some(out) = results.first() {
            let f = std::fs::File::create(path).unwrap_or_else(|e| {
                eprintln!("raft-sim: cannot create {path}: {e}");
                std::process::exit(2)
            });
            if let Err(e) = write_history(std::io::BufWriter::new(f), &out.history) {
                eprintln!("raft-sim: cannot write {path}: {e}");
                std::process::exit(2)
            }
        }
    }
    let failed = results.iter().filter(|o| o.failure.is_some()).count();
    let inconclusive = results.iter().filter(|o| o.inconclusive).count();
    let (mut ops, mut acked, mut crashes, mut confs, mut snaps, mut installs, mut leaders) =
        (0, 0, 0, 0, 0, 0, 0);
    let (mut pauses, mut disk_faults, mut transfers) = (0, 0, 0);
    for o in &results {
        ops += o.stats.ops;
        acked += o.stats.acked_writes;
        crashes += o.stats.crashes;
        confs += o.stats.conf_changes;
        snaps += o.stats.snapshots;
        installs += o.stats.snapshot_installs;
        leaders += o.stats.leaders;
        pauses += o.stats.pauses;
        disk_faults += o.stats.disk_faults;
        transfers += o.stats.transfers;
    }
    eprintln!(
        "totals: {ops} client ops ({acked} acknowledged writes), {leaders} leaders, {crashes} crashes ({disk_faults} from disk faults), {pauses} pauses, {transfers} leadership transfers, {confs} membership changes, {snaps} snapshots taken, {installs} snapshots installed, {inconclusive} inconclusive histories (counted as failed)"
    );
    println!("{} passed, {} failed", results.len() - failed, failed);
    if failed > 0 {
        std::process::exit(1);
    }
}
