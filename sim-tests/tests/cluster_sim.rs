//! The full-stack turmoil simulation in CI: 20 seeds of five real agents under partitions and
//! crashes, with the check that restarted and reconnected managers hear from the leader in time
//! (the soak runs more: see the README).

use shoal_sim::cluster_sim::{run, ClusterSimOptions};

#[test]
fn twenty_seeds_of_the_full_stack_under_partitions_and_crashes() {
    let mut failures = Vec::new();
    let mut acked = 0;
    let mut role_changes = 0;
    let mut contacts = 0;
    for seed in 0..20 {
        let r = run(&ClusterSimOptions {
            seed,
            chaos_secs: 30,
        });
        acked += r.acked_updates;
        role_changes += r.role_changes;
        contacts += r.contact_after_restart + r.contact_after_heal;
        if let Some(f) = r.failure {
            failures.push(format!("seed {seed}: {f}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        acked >= 50 && role_changes >= 20,
        "the workload did run: {acked} updates, {role_changes} role changes acknowledged"
    );
    assert!(
        contacts >= 5,
        "the contact check did check: {contacts} restarts and repairs checked"
    );
}
