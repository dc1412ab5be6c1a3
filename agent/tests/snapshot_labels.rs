//! A snapshot holds every entry it is labelled with. Found by the Jepsen campaign (seed 8): the
//! Raft driver labelled a snapshot with the core's current applied index, which could already
//! count entries applied later in the same batch of effects, so a manager restarted from that
//! snapshot never had them. Here: concurrent writers (several entries applied per round), a
//! snapshot every few entries, each manager killed and restarted from its snapshot; every
//! manager's own state must end equal to the leader's.

mod common;

use common::{serial, Cluster};
use serde_json::Value;

/// The labels of node-1 in agent `i`'s own state (`node inspect --stale`).
fn own_labels(c: &Cluster, i: usize) -> Option<Value> {
    let out = c.shoal(i, &["node", "inspect", "--stale", "node-1"]);
    if out.code != 0 {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v.get(0).map(|n| n["labels"].clone())
}

#[test]
fn managers_restarted_from_snapshots_miss_no_entry() {
    let _serial = serial();
    let mut c = Cluster::start_with_env(
        3,
        &[
            ("SHOAL_SNAPSHOT_EVERY", "5"),
            ("SHOAL_SNAPSHOT_TRAILING", "1"),
        ],
    );
    c.form(3);
    for round in 0..6 {
        // Four writers at once; each add of w<t>-<i> removes w<t>-<i-6>, so a missing entry
        // leaves a label that should have gone (or lacks one that should be there) for good.
        std::thread::scope(|s| {
            for t in 0..4 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..40 {
                        let n = round * 40 + i;
                        let mut args = vec![
                            "node".to_string(),
                            "update".into(),
                            "--label-add".into(),
                            format!("w{t}-{n}=v"),
                        ];
                        if n >= 6 {
                            args.push("--label-rm".into());
                            args.push(format!("w{t}-{}", n - 6));
                        }
                        args.push("node-1".into());
                        let args: Vec<&str> = args.iter().map(String::as_str).collect();
                        // Idempotent: a write refused while leadership moves is asked again.
                        c.wait("a label write", || {
                            (c.shoal(t % 3, &args).code == 0).then_some(())
                        });
                    }
                });
            }
        });
        // Every manager, one after the other, restarts from its snapshot.
        for i in 0..3 {
            c.kill(i);
            c.spawn(i);
            c.wait("a leader after the restart", || c.leader(i));
        }
    }
    let want = c.wait("the committed labels", || {
        let l = c.inspect(0, "node-1")?;
        Some(l["labels"].clone())
    });
    assert_eq!(want.as_object().map(|m| m.len()), Some(24), "{want}");
    for i in 0..3 {
        c.wait(
            &format!("node-{} to hold the committed labels", i + 1),
            || (own_labels(&c, i).as_ref() == Some(&want)).then_some(()),
        );
    }
}
