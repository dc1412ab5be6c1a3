//! `shoal-jepsen`: the Jepsen-style suite's command. For now `testbed`: builds the private
//! network (bridge 10.77.0.1/24, node `i` at 10.77.0.<10+i> in namespace `shj<i>`), runs one
//! `shoal agent` per node, forms a swarm, checks that every node reaches every other and that
//! nothing routes outside the private namespace, prints `node ls`, and tears it all down.
//!
//! `shoal-jepsen testbed [--nodes N] [--managers M] [--shoal PATH]` (root).

use std::path::PathBuf;
use std::process::ExitCode;

use shoal_jepsen::testbed::{self, Agent, Network};

struct Opts {
    nodes: usize,
    managers: usize,
    shoal: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        nodes: 3,
        managers: 3,
        shoal: default_shoal(),
    };
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("testbed") => {}
        Some(other) => return Err(format!("unknown command {other:?} (testbed)")),
        None => {
            return Err(
                "usage: shoal-jepsen testbed [--nodes N] [--managers M] [--shoal PATH]".into(),
            )
        }
    }
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--nodes" => o.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--managers" => {
                o.managers = value()?.parse().map_err(|e| format!("--managers: {e}"))?
            }
            "--shoal" => o.shoal = PathBuf::from(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.nodes == 0 || o.nodes > 200 {
        return Err("--nodes: 1 to 200".into());
    }
    o.managers = o.managers.clamp(1, o.nodes);
    Ok(o)
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
    let opts = match parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("shoal-jepsen: {e}");
            return ExitCode::from(2);
        }
    };
    match testbed::enter_private_namespace() {
        Ok(Some(code)) => return ExitCode::from(code.clamp(0, 255) as u8),
        Ok(None) => {}
        Err(e) => {
            eprintln!("shoal-jepsen: {e}");
            return ExitCode::from(2);
        }
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shoal-jepsen: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(o: &Opts) -> Result<(), String> {
    if !o.shoal.exists() {
        return Err(format!(
            "{} not found: build it (cargo build -p shoal-agent) or pass --shoal",
            o.shoal.display()
        ));
    }
    let net = Network::create(o.nodes)?;
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let agents = net
        .nodes
        .iter()
        .map(|n| Agent::start(&o.shoal, n, tmp.path()))
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
