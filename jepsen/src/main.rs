//! `shoal-jepsen`: the Jepsen-style suite's command (root).
//!
//! `shoal-jepsen [test] [--nodes N] [--managers M] [--time S] [--nemesis all|LIST]
//! [--workload all|LIST] [--seed S] [--concurrency C] [--store DIR] [--test NAME]
//! [--shoal PATH]` runs one test and writes `store/<test>/<time>/`; exit status 0 valid,
//! 1 invalid, 2 unknown (or a set-up error).
//!
//! `shoal-jepsen testbed [--nodes N] [--managers M] [--shoal PATH]` builds the private network
//! (bridge 10.77.0.1/24, node `i` at 10.77.0.<10+i> in namespace `shj<i>`), forms a swarm,
//! checks that nothing routes outside the private namespace, prints `node ls` and tears it
//! all down.

use std::path::PathBuf;
use std::process::ExitCode;

use shoal_jepsen::nemesis;
use shoal_jepsen::run::{self, Config, WORKLOADS};
use shoal_jepsen::testbed::{self, Agent, Network};

const USAGE: &str = "usage: shoal-jepsen [test] [--nodes N] [--managers M] [--time SECONDS] \
[--nemesis all|partition,kill,pause,netem,clock,membership|none] [--workload all|register,services] \
[--seed S] [--concurrency C] [--store DIR] [--test NAME] [--shoal PATH]\n       \
shoal-jepsen campaign --runs N [the options of a test: runs with seeds S, S+1, …]\n       \
shoal-jepsen testbed [--nodes N] [--managers M] [--shoal PATH]";

enum Mode {
    Testbed,
    Test,
    /// `campaign --runs N`: N runs with seeds S, S+1, …
    Campaign(u64),
}

fn list(value: &str, all: &[&str], what: &str) -> Result<Vec<String>, String> {
    match value {
        "all" => Ok(all.iter().map(|s| s.to_string()).collect()),
        "none" => Ok(Vec::new()),
        _ => value
            .split(',')
            .map(|s| {
                let s = s.trim();
                if all.contains(&s) {
                    Ok(s.to_string())
                } else {
                    Err(format!("unknown {what} {s:?} (one of {})", all.join(", ")))
                }
            })
            .collect(),
    }
}

fn parse(args: &[String]) -> Result<(Mode, Config), String> {
    let mut c = Config {
        test: String::new(),
        nodes: 5,
        managers: 3,
        time_s: 120,
        nemeses: nemesis::ALL.iter().map(|s| s.to_string()).collect(),
        workloads: WORKLOADS.iter().map(|s| s.to_string()).collect(),
        seed: 1,
        concurrency: 5,
        shoal: default_shoal(),
        store: PathBuf::from("store"),
    };
    let mut it = args.iter().peekable();
    let mut mode = match it.peek().map(|s| s.as_str()) {
        Some("testbed") => {
            it.next();
            c.nodes = 3;
            Mode::Testbed
        }
        Some("test") => {
            it.next();
            Mode::Test
        }
        Some("campaign") => {
            it.next();
            Mode::Campaign(10)
        }
        _ => Mode::Test,
    };
    let mut managers_set = false;
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String, what: &str| -> Result<u64, String> {
            v.parse().map_err(|e| format!("{what} {v:?}: {e}"))
        };
        match a.as_str() {
            "--nodes" => c.nodes = num(value()?, "--nodes")? as usize,
            "--managers" => {
                c.managers = num(value()?, "--managers")? as usize;
                managers_set = true;
            }
            "--time" => c.time_s = num(value()?, "--time")?,
            "--seed" => c.seed = num(value()?, "--seed")?,
            "--concurrency" => c.concurrency = num(value()?, "--concurrency")? as usize,
            "--nemesis" => c.nemeses = list(&value()?, nemesis::ALL, "nemesis")?,
            "--workload" => c.workloads = list(&value()?, WORKLOADS, "workload")?,
            "--store" => c.store = PathBuf::from(value()?),
            "--test" => c.test = value()?,
            "--shoal" => c.shoal = PathBuf::from(value()?),
            "--runs" if matches!(mode, Mode::Campaign(_)) => {
                let runs = num(value()?, "--runs")?;
                if runs == 0 || runs > 1000 {
                    return Err("--runs: 1 to 1000".into());
                }
                mode = Mode::Campaign(runs);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if c.nodes == 0 || c.nodes > 200 {
        return Err("--nodes: 1 to 200".into());
    }
    if !managers_set && matches!(mode, Mode::Testbed) {
        c.managers = c.nodes;
    }
    c.managers = c.managers.clamp(1, c.nodes);
    if c.concurrency == 0 || c.concurrency > 100 {
        return Err("--concurrency: 1 to 100".into());
    }
    if c.time_s == 0 || c.time_s > 86_400 {
        return Err("--time: 1 to 86400 seconds".into());
    }
    if c.test.is_empty() {
        let mut name = format!("shoal-{}n", c.nodes);
        for part in [&c.nemeses, &c.workloads] {
            name.push('-');
            name.push_str(&if part.is_empty() {
                "none".to_string()
            } else {
                part.join("+")
            });
        }
        c.test = name;
    }
    if c.test.contains('/') || c.test.starts_with('.') {
        return Err(format!("--test {:?}: a plain name", c.test));
    }
    Ok((mode, c))
}

/// The `shoal` next to this program (both built into the same target directory).
fn default_shoal() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("shoal")))
        .unwrap_or_else(|| PathBuf::from("shoal"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Re-checks the registers of a saved run: `shoal-jepsen check RUN_DIR`.
    if args.first().map(String::as_str) == Some("check") {
        let Some(dir) = args.get(1) else {
            eprintln!("usage: shoal-jepsen check RUN_DIR");
            return ExitCode::from(2);
        };
        let text = match std::fs::read_to_string(std::path::Path::new(dir).join("history.jsonl")) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("shoal-jepsen: {dir}/history.jsonl: {e}");
                return ExitCode::from(2);
            }
        };
        let ops: Vec<shoal_jepsen::history::Op> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<shoal_jepsen::history::Record>(l).ok())
            .filter_map(|r| match r {
                shoal_jepsen::history::Record::Op(o) => Some(o),
                _ => None,
            })
            .collect();
        let v = shoal_jepsen::checker::registers(&ops);
        println!(
            "{} {:?} {} {}",
            v.checker,
            v.valid,
            v.anomaly.unwrap_or_default(),
            v.detail
        );
        return ExitCode::from(v.valid.exit_code());
    }
    // The packet-fault server, started by the suite inside a node's namespace.
    if args.first().map(String::as_str) == Some("__netem") {
        let served = shoal_jepsen::netem::Spec::parse(&args[1..])
            .and_then(|spec| shoal_jepsen::netem::serve(&spec));
        if let Err(e) = served {
            eprintln!("shoal-jepsen __netem: {e}");
        }
        return ExitCode::from(2);
    }
    let (mode, mut cfg) = match parse(&args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("shoal-jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    if !cfg.shoal.exists() {
        eprintln!(
            "shoal-jepsen: {} not found: build it (cargo build -p shoal-agent) or pass --shoal",
            cfg.shoal.display()
        );
        return ExitCode::from(2);
    }
    // Absolute paths: the suite re-executes itself in its namespace, and agents run elsewhere.
    if let Ok(cwd) = std::env::current_dir() {
        cfg.shoal = cwd.join(&cfg.shoal);
        cfg.store = cwd.join(&cfg.store);
    }
    if let Mode::Campaign(runs) = mode {
        return campaign(&cfg, runs);
    }
    match testbed::enter_private_namespace() {
        Ok(Some(code)) => return ExitCode::from(code.clamp(0, 255) as u8),
        Ok(None) => {}
        Err(e) => {
            eprintln!("shoal-jepsen: {e}");
            return ExitCode::from(2);
        }
    }
    match mode {
        Mode::Testbed => match testbed_run(&cfg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("shoal-jepsen: {e}");
                ExitCode::from(1)
            }
        },
        Mode::Test | Mode::Campaign(_) => match run::run(&cfg) {
            Ok((valid, dir)) => {
                println!("report: {}", dir.join("report.html").display());
                ExitCode::from(valid.exit_code())
            }
            Err(e) => {
                eprintln!("shoal-jepsen: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Runs the campaign: this program once per seed, each run in a namespace of its own.
fn campaign(cfg: &Config, runs: u64) -> ExitCode {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("shoal-jepsen: cannot find this program");
        return ExitCode::from(2);
    };
    let args: Vec<String> = vec![
        "test".into(),
        "--nodes".into(),
        cfg.nodes.to_string(),
        "--managers".into(),
        cfg.managers.to_string(),
        "--time".into(),
        cfg.time_s.to_string(),
        "--nemesis".into(),
        if cfg.nemeses.is_empty() {
            "none".into()
        } else {
            cfg.nemeses.join(",")
        },
        "--workload".into(),
        if cfg.workloads.is_empty() {
            "none".into()
        } else {
            cfg.workloads.join(",")
        },
        "--concurrency".into(),
        cfg.concurrency.to_string(),
        "--store".into(),
        cfg.store.display().to_string(),
        "--test".into(),
        cfg.test.clone(),
        "--shoal".into(),
        cfg.shoal.display().to_string(),
    ];
    let outcomes = shoal_jepsen::campaign::run(&exe, &args, &cfg.store, &cfg.test, cfg.seed, runs);
    let summary = shoal_jepsen::campaign::summary(&outcomes);
    print!("{summary}");
    let file = cfg.store.join(&cfg.test).join(format!(
        "campaign-{}.txt",
        run::stamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )
    ));
    if std::fs::write(&file, &summary).is_ok() {
        println!("summary: {}", file.display());
    }
    ExitCode::from(shoal_jepsen::campaign::verdict(&outcomes).exit_code())
}

fn testbed_run(o: &Config) -> Result<(), String> {
    let net = Network::create(o.nodes)?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let agents = net
        .nodes
        .iter()
        .map(|n| {
            Agent::start(
                &o.shoal,
                n,
                &tmp.path().join(&n.netns),
                &tmp.path().join(format!("{}.log", n.netns)),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    testbed::form(&o.shoal, &agents, o.managers)?;
    println!(
        "{}",
        testbed::cli(&o.shoal, &agents[0].dir, &["node", "ls"])?.trim_end()
    );
    // Every node reached the others (they are all Ready); none reaches outside.
    for a in &net.nodes {
        let out = a
            .command("ip")
            .args(["route", "get", "1.1.1.1"])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Err(format!(
                "{} has a route out of {}",
                a.netns,
                testbed::SUBNET
            ));
        }
    }
    println!(
        "testbed: {} agents on {} in their own namespaces, no route out",
        agents.len(),
        testbed::SUBNET
    );
    Ok(())
}
