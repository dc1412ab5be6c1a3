//! The test bed end to end: a private namespace with three agents in namespaces of their own
//! forms a swarm, and leaves nothing behind on the host.

use std::process::Command;

mod common;

#[test]
fn three_agents_form_a_swarm_in_private_namespaces_and_leave_nothing() {
    let Some(shoal) = common::shoal_or_skip("the test bed") else {
        return;
    };
    let before = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    let out = Command::new(env!("CARGO_BIN_EXE_shoal-jepsen"))
        .args(["testbed", "--nodes", "3", "--shoal"])
        .arg(&shoal)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("Ready").count(), 3, "{stdout}");
    assert!(stdout.contains("Leader"), "{stdout}");
    assert!(stdout.contains("no route out"), "{stdout}");
    // The namespaces lived in the suite's private mount namespace: none is left on the host.
    let after = std::fs::read_dir("/run/netns")
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(before, after);
}
