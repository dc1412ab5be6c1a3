//! A campaign: several runs of the same test with consecutive seeds, each in a process (and a
//! private namespace) of its own, summed up: each run's verdict and figures, and the failover
//! after leader kills over all runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::history::{Results, Validity};

/// One run's outcome in a campaign.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// Its seed.
    pub seed: u64,
    /// Its run directory.
    pub dir: PathBuf,
    /// Its results, if it wrote them.
    pub results: Option<Results>,
}

/// Runs `runs` tests: this program again with `args` and `--seed first+i`, one after the
/// other, reading each run's `results.json` from `store/<test>/latest`.
pub fn run(
    exe: &Path,
    args: &[String],
    store: &Path,
    test: &str,
    first: u64,
    runs: u64,
) -> Vec<RunOutcome> {
    let mut out = Vec::new();
    for i in 0..runs {
        let seed = first + i;
        println!("campaign run {}/{runs}: seed {seed}", i + 1);
        let status = Command::new(exe)
            .args(args)
            .args(["--seed", &seed.to_string()])
            .status();
        let latest = store.join(test).join("latest");
        let dir = std::fs::canonicalize(&latest).unwrap_or(latest);
        let results = std::fs::read_to_string(dir.join("results.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<Results>(&s).ok())
            .filter(|r| r.seed == seed);
        if let Err(e) = status {
            eprintln!("campaign: run {seed}: {e}");
        }
        out.push(RunOutcome { seed, dir, results });
    }
    out
}

/// The campaign's verdict: every run valid is valid; any invalid is invalid; else unknown.
pub fn verdict(runs: &[RunOutcome]) -> Validity {
    runs.iter().fold(Validity::True, |acc, r| {
        acc.and(r.results.as_ref().map_or(Validity::Unknown, |x| x.valid))
    })
}

/// A table of the runs and the failover figures over all of them.
pub fn summary(runs: &[RunOutcome]) -> String {
    let mut s = String::from("seed  valid    ok      fail   info  failovers  anomalies\n");
    let mut samples = Vec::new();
    for r in runs {
        match &r.results {
            Some(x) => {
                samples.extend(x.failover.samples_ms.iter().copied());
                let anomalies: Vec<String> = x
                    .checkers
                    .iter()
                    .filter(|c| c.valid != Validity::True)
                    .map(|c| format!("{}: {}", c.checker, c.anomaly.as_deref().unwrap_or("?")))
                    .collect();
                s.push_str(&format!(
                    "{:<5} {:<8} {:<7} {:<6} {:<5} {:<10} {}\n",
                    r.seed,
                    match x.valid {
                        Validity::True => "true",
                        Validity::False => "FALSE",
                        Validity::Unknown => "unknown",
                    },
                    x.ops.ok,
                    x.ops.fail,
                    x.ops.info,
                    x.failover.samples_ms.len(),
                    if anomalies.is_empty() {
                        "-".to_string()
                    } else {
                        anomalies.join("; ")
                    }
                ));
            }
            None => s.push_str(&format!(
                "{:<5} unknown  (no results: see {})\n",
                r.seed,
                r.dir.display()
            )),
        }
    }
    let f = crate::run::failover(samples);
    s.push_str(&format!(
        "failover after leader kill over the campaign: {} samples, median {} ms, p99 {} ms, max {} ms\n",
        f.samples_ms.len(),
        f.median_ms.map_or("-".into(), |v| v.to_string()),
        f.p99_ms.map_or("-".into(), |v| v.to_string()),
        f.samples_ms.last().map_or("-".into(), |v| v.to_string()),
    ));
    s
}
