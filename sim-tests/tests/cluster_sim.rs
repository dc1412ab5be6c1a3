//! The full-stack turmoil simulation in CI: 20 seeds of five real agents under partitions and
//! crashes, with the check that restarted and reconnected managers hear from the leader in time
//! (the soak runs more: see the README), and services created, scaled, updated and removed
//! through it all, which must converge to what was acknowledged.

use shoal_sim::cluster_sim::{run, ClusterSimOptions};

#[test]
fn twenty_seeds_of_the_full_stack_under_partitions_and_crashes() {
    let mut failures = Vec::new();
    let mut acked = 0;
    let mut role_changes = 0;
    let mut contacts = 0;
    let (mut created, mut updated, mut removed, mut started) = (0, 0, 0, 0);
    for seed in 0..20 {
        let r = run(&ClusterSimOptions {
            seed,
            chaos_secs: 30,
        });
        acked += r.acked_updates;
        role_changes += r.role_changes;
        contacts += r.contact_after_restart + r.contact_after_heal;
        created += r.services_created;
        updated += r.services_updated;
        removed += r.services_removed;
        started += r.tasks_started;
        if let Some(f) = r.failure {
            failures.push(format!("seed {seed}: {f}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(
        acked >= 50 && role_changes >= 20,
        "the workload did run: {acked} updates, {role_changes} role changes acknowledged"
    );
    eprintln!(
        "services: {created} created, {updated} updated, {removed} removed; {started} tasks \
         started"
    );
    assert!(
        created >= 40 && updated >= 40 && removed >= 5 && started >= 100,
        "the service workload did run: {created} created, {updated} updated, {removed} \
         removed, {started} tasks started"
    );
    assert!(
        contacts >= 5,
        "the contact check did check: {contacts} restarts and repairs checked"
    );
}
