//! `raft-bench <inproc|durable|failover|all> [--seconds S] [--runs R] [--trials T] [--dir D]`:
//! runs the Raft benchmark scenarios and prints one JSON object per result line.

use serde_json::json;
use shoal_benches::{durable, failover, inproc, median};
use std::time::Duration;

struct Args {
    scenario: String,
    seconds: f64,
    runs: usize,
    trials: usize,
    dir: Option<String>,
    clients: Option<Vec<usize>>,
    heartbeat_ms: Option<u32>,
    pre_vote: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: raft-bench <inproc|durable|failover|all> [--seconds S] [--runs R] [--trials T] [--dir DIR] [--clients a,b,c] [--heartbeat-ms H] [--no-pre-vote]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let scenario = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        scenario,
        seconds: 3.0,
        runs: 3,
        trials: 1000,
        dir: None,
        clients: None,
        heartbeat_ms: None,
        pre_vote: true,
    };
    while let Some(arg) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--seconds" => a.seconds = val().parse().unwrap_or_else(|_| usage()),
            "--runs" => a.runs = val().parse().unwrap_or_else(|_| usage()),
            "--trials" => a.trials = val().parse().unwrap_or_else(|_| usage()),
            "--dir" => a.dir = Some(val()),
            "--heartbeat-ms" => a.heartbeat_ms = Some(val().parse().unwrap_or_else(|_| usage())),
            "--no-pre-vote" => a.pre_vote = false,
            "--clients" => {
                a.clients = Some(
                    val()
                        .split(',')
                        .map(|c| c.parse().unwrap_or_else(|_| usage()))
                        .collect(),
                )
            }
            _ => usage(),
        }
    }
    if a.runs == 0 || a.trials == 0 || a.seconds <= 0.0 {
        usage();
    }
    a
}

fn run_inproc(a: &Args) {
    let measure = Duration::from_secs_f64(a.seconds);
    let warmup = Duration::from_secs_f64((a.seconds / 3.0).min(1.0));
    for &c in a.clients.as_deref().unwrap_or(&[1, 64, 256, 1024]) {
        let runs: Vec<inproc::InprocResult> = (0..a.runs)
            .map(|_| inproc::run(c, warmup, measure))
            .collect();
        let mut ops: Vec<f64> = runs.iter().map(|r| r.ops_per_s).collect();
        let mut lat: Vec<f64> = runs.iter().map(|r| r.mean_latency_us).collect();
        let all_ops: Vec<u64> = ops.iter().map(|o| o.round() as u64).collect();
        println!(
            "{}",
            json!({
                "scenario": "inproc",
                "clients": c,
                "ops_per_s": median(&mut ops).round() as u64,
                "mean_latency_us": (median(&mut lat) * 100.0).round() / 100.0,
                "runs": all_ops,
            })
        );
    }
}

fn run_durable(a: &Args) {
    let measure = Duration::from_secs_f64(a.seconds);
    let warmup = Duration::from_secs_f64((a.seconds / 3.0).min(1.0));
    for &c in a.clients.as_deref().unwrap_or(&[1, 256]) {
        // Plain and encrypted runs alternate, each going first every other time, so that both
        // see the same disk and load (a run right after another finds the disk busier).
        let mut by_mode: [Vec<durable::DurableResult>; 2] = [Vec::new(), Vec::new()];
        for run in 0..a.runs {
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for encrypted in order {
                let results = &mut by_mode[encrypted];
                let tmp = match &a.dir {
                    Some(d) => tempfile::tempdir_in(d),
                    None => tempfile::tempdir_in("."),
                }
                .expect("temp dir for the durable benchmark");
                results.push(durable::run(c, tmp.path(), warmup, measure, encrypted == 1));
            }
        }
        for (encrypted, results) in by_mode.iter_mut().enumerate() {
            results.sort_by(|x, y| x.ops_per_s.total_cmp(&y.ops_per_s));
            let r = &results[results.len() / 2];
            println!(
                "{}",
                json!({
                    "scenario": "durable",
                    "encrypted": encrypted == 1,
                    "clients": c,
                    "ops_per_s": r.ops_per_s.round() as u64,
                    "p50_us": r.p50_us,
                    "p99_us": r.p99_us,
                    "entries_per_fsync": (r.entries_per_fsync * 10.0).round() / 10.0,
                    "fsyncs_per_s": r.fsyncs_per_s.round() as u64,
                    "runs": results.iter().map(|r| r.ops_per_s.round() as u64).collect::<Vec<_>>(),
                })
            );
        }
    }
}

fn run_failover(a: &Args) {
    let mut p = failover::FailoverParams::default();
    if let Some(h) = a.heartbeat_ms {
        p.heartbeat_ms = h;
    }
    p.pre_vote = a.pre_vote;
    let r = failover::run(&p, a.trials);
    println!(
        "{}",
        json!({
            "scenario": "failover",
            "trials": r.trials,
            "min_ms": (r.min_ms * 10.0).round() / 10.0,
            "median_ms": (r.median_ms * 10.0).round() / 10.0,
            "p99_ms": (r.p99_ms * 10.0).round() / 10.0,
            "max_ms": (r.max_ms * 10.0).round() / 10.0,
            "nodes": p.nodes,
            "election_timeout_ms": [p.election_ms, 2 * p.election_ms],
            "heartbeat_ms": p.heartbeat_ms,
            "one_way_delay_ms": p.delay_us as f64 / 1000.0,
            "pre_vote": p.pre_vote,
        })
    );
}

fn main() {
    let a = parse();
    match a.scenario.as_str() {
        "inproc" => run_inproc(&a),
        "durable" => run_durable(&a),
        "failover" => run_failover(&a),
        "all" => {
            run_inproc(&a);
            run_durable(&a);
            run_failover(&a);
        }
        _ => usage(),
    }
}
