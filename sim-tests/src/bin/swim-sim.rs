//! `swim-sim --nodes N --seconds T --loss P --seed S [--crash K] [--stall K]
//! [--partition halves:START:END] [--lifeguard on|off]`: runs N SWIM members on a simulated
//! network and prints one JSON object with the detection, accuracy, load, dissemination and merge
//! figures.

use shoal_sim::swim_sim::{run, SwimOptions};

fn usage(msg: &str) -> ! {
    eprintln!("swim-sim: {msg}");
    eprintln!(
        "usage: swim-sim --nodes N --seconds T --loss P --seed S [--crash K] [--stall K] [--partition halves:START:END] [--lifeguard on|off]"
    );
    std::process::exit(2)
}

fn main() {
    let mut o = SwimOptions::new(64, 60, 0.0, 1);
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
            "--crash" => o.crash = v().parse().unwrap_or_else(|_| usage("--crash: a count")),
            "--stall" => o.stall = v().parse().unwrap_or_else(|_| usage("--stall: a count")),
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
    let report = run(o.clone());
    println!("{}", report.to_json(&o));
}
