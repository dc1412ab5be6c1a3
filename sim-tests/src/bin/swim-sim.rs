//! `swim-sim --nodes N --seconds T --loss P --seed S [--seeds M] [--crash K] [--stall K]
//! [--partition halves:START:END] [--lifeguard on|off] [--suspicion-mult X]
//! [--probe-timeout-ms T] [--schedule aligned|shuffled]`: runs N SWIM members on a simulated network and prints one JSON
//! object with the detection, accuracy, load, dissemination and merge figures; with `--seeds M`,
//! one per seed S, S+1, … and a last line summarising them all.

use shoal_sim::swim_sim::{run, summary, SwimOptions};
use std::io::Write;

fn usage(msg: &str) -> ! {
    eprintln!("swim-sim: {msg}");
    eprintln!(
        "usage: swim-sim --nodes N --seconds T --loss P --seed S [--seeds M] [--crash K] [--stall K] [--partition halves:START:END] [--lifeguard on|off] [--suspicion-mult X] [--probe-timeout-ms T] [--schedule aligned|shuffled]"
    );
    std::process::exit(2)
}

fn main() {
    let mut o = SwimOptions::new(64, 60, 0.0, 1);
    let mut seeds = 1u64;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--nodes" => o.nodes = v().parse().unwrap_or_else(|_| usage("--nodes: a count")),
            "--seconds" => o.seconds = v().parse().unwrap_or_else(|_| usage("--seconds: seconds")),
            "--loss" => {
                o.loss = v()
                    .parse()
                    .unwrap_or_else(|_| usage("--loss: a probability"));
                if !(0.0..1.0).contains(&o.loss) {
                    usage("--loss must be in [0, 1)");
                }
            }
            "--seed" => o.seed = v().parse().unwrap_or_else(|_| usage("--seed: an integer")),
            "--seeds" => {
                seeds = v().parse().unwrap_or_else(|_| usage("--seeds: a count"));
                if seeds == 0 {
                    usage("--seeds must be at least 1");
                }
            }
            "--suspicion-mult" => {
                let m: f64 = v()
                    .parse()
                    .unwrap_or_else(|_| usage("--suspicion-mult: a number"));
                if !(0.1..=1000.0).contains(&m) {
                    usage("--suspicion-mult must be in [0.1, 1000]");
                }
                o.suspicion_mult = Some(m);
            }
            "--probe-timeout-ms" => {
                let ms: u64 = v()
                    .parse()
                    .unwrap_or_else(|_| usage("--probe-timeout-ms: milliseconds"));
                if ms == 0 || ms >= 1000 {
                    usage("--probe-timeout-ms must be in 1..999 (below the 1 s protocol period)");
                }
                o.probe_timeout_ms = Some(ms);
            }
            "--crash" => o.crash = v().parse().unwrap_or_else(|_| usage("--crash: a count")),
            "--stall" => o.stall = v().parse().unwrap_or_else(|_| usage("--stall: a count")),
            "--schedule" => {
                o.aligned_rounds = match v().as_str() {
                    "aligned" => true,
                    "shuffled" => false,
                    _ => usage("--schedule takes aligned or shuffled"),
                }
            }
            "--lifeguard" => {
                o.lifeguard = match v().as_str() {
                    "on" => true,
                    "off" => false,
                    _ => usage("--lifeguard takes on or off"),
                }
            }
            "--partition" => {
                let spec = v();
                let parts: Vec<&str> = spec.split(':').collect();
                match parts.as_slice() {
                    ["halves", s, e] => {
                        let s: u64 = s.parse().unwrap_or_else(|_| usage("partition start"));
                        let e: u64 = e.parse().unwrap_or_else(|_| usage("partition end"));
                        if e <= s {
                            usage("partition end must follow its start");
                        }
                        o.partition = Some((s, e));
                    }
                    _ => usage("--partition takes halves:START:END"),
                }
            }
            _ => usage(&format!("unknown argument {a:?}")),
        }
    }
    if o.nodes < 2 || o.seconds == 0 {
        usage("need at least 2 nodes and 1 second");
    }
    let mut out = std::io::stdout().lock();
    let mut reports = Vec::new();
    for seed in o.seed..o.seed.saturating_add(seeds) {
        let opts = SwimOptions { seed, ..o.clone() };
        let report = run(opts.clone());
        // A closed pipe (`| head`) ends the run quietly.
        if writeln!(out, "{}", report.to_json(&opts)).is_err() {
            return;
        }
        reports.push(report);
    }
    if reports.len() > 1 {
        let _ = writeln!(out, "{}", summary(&reports));
    }
}
