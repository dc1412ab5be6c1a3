//! The suite's short run, as CI runs it: four real agents under every nemesis and every
//! workload for 40 s, then the final phase; the run must be valid, and its directory must
//! hold the history, the results, the agents' logs and the report.

use std::process::Command;

mod common;

#[test]
fn a_short_run_under_every_nemesis_is_valid_and_reported() {
    let jepsen = env!("CARGO_BIN_EXE_shoal-jepsen");
    let Some(shoal) = common::shoal_or_skip("the short Jepsen run") else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let out = Command::new(jepsen)
        .args([
            "--nodes",
            "4",
            "--time",
            "40",
            "--nemesis",
            "all",
            "--workload",
            "all",
            "--seed",
            "1",
            "--test",
            "ci",
            "--shoal",
        ])
        .arg(&shoal)
        .arg("--store")
        .arg(store.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let run = store.path().join("ci").join("latest");
    let results = std::fs::read_to_string(run.join("results.json")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}\n{results}");
    let results: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(results["valid"], true);
    let checkers: Vec<&str> = results["checkers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checker"].as_str().unwrap())
        .collect();
    for c in [
        "linearizable-registers",
        "membership",
        "service-set",
        "convergence",
        "one-task-per-slot",
        "unsafe-demote",
        "no-panics",
    ] {
        assert!(checkers.contains(&c), "{c} missing: {checkers:?}");
    }
    assert!(results["ops"]["ok"].as_u64().unwrap() > 100, "{results}");
    let history = std::fs::read_to_string(run.join("history.jsonl")).unwrap();
    assert!(history.lines().any(|l| l.contains("\"type\":\"nemesis\"")));
    for i in 1..=4 {
        assert!(run.join(format!("n{i}.log")).exists());
    }
    let report = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(report.contains("<svg") && report.contains("linearizable-registers"));
}
