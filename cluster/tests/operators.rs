//! Operators' client certificates in the replicated state: recorded by serial, removed by name,
//! kept across snapshots (and absent from snapshots written before they existed).

mod common;

use common::cluster;
use shoal_cluster::*;

fn operator(serial: &str, name: &str, read_only: bool) -> Operator {
    Operator {
        serial: serial.into(),
        name: name.into(),
        read_only,
        issued_ms: 10,
        not_after_ms: 10 + 30 * 86_400_000,
    }
}

fn apply(s: &mut ClusterState, cmd: Command) -> Result<(), ClusterError> {
    let index = s.applied() + 1;
    // Through the encoding, as a replica sees it.
    s.apply(index, &Command::decode(&cmd.encode()).unwrap())
}

fn add(s: &mut ClusterState, o: Operator) -> Result<(), ClusterError> {
    apply(
        s,
        Command::AddOperator {
            operator: o,
            at_ms: 11,
        },
    )
}

#[test]
fn certificates_are_recorded_and_removed_by_name() {
    let mut s = cluster(1, 1);
    add(&mut s, operator("0a", "alice", false)).unwrap();
    add(&mut s, operator("0b", "alice", true)).unwrap();
    add(&mut s, operator("0c", "bob", true)).unwrap();
    assert_eq!(s.operators().len(), 3);
    assert!(s.operators()["0b"].read_only);
    // The same serial twice, and malformed records, are refused on every replica.
    let e = add(&mut s, operator("0c", "carol", false)).unwrap_err();
    assert!(e.to_string().contains("already recorded"), "{e}");
    assert!(add(&mut s, operator("zz", "carol", false)).is_err());
    assert!(add(&mut s, operator("0d", "no spaces", false)).is_err());
    assert_eq!(s.operators().len(), 3);

    let snapshot = s.snapshot();
    assert_eq!(
        ClusterState::restore(&snapshot).unwrap().operators(),
        s.operators()
    );

    apply(
        &mut s,
        Command::RemoveOperator {
            name: "alice".into(),
            at_ms: 12,
        },
    )
    .unwrap();
    assert_eq!(s.operators().keys().collect::<Vec<_>>(), ["0c"]);
    let e = apply(
        &mut s,
        Command::RemoveOperator {
            name: "alice".into(),
            at_ms: 13,
        },
    )
    .unwrap_err();
    assert_eq!(e.to_string(), "no client certificate named alice");

    // Before `swarm init` there is nothing to record them in.
    assert!(add(&mut ClusterState::new(), operator("01", "a", false)).is_err());
}

#[test]
fn a_snapshot_from_before_operators_still_restores() {
    let s = cluster(1, 2);
    let mut v9 = s.snapshot();
    assert_eq!(v9[0], SNAPSHOT_VERSION);
    // Version 9 is version 10 without the operators map, its last field.
    assert_eq!(v9.pop(), Some(0));
    v9[0] = 9;
    let restored = ClusterState::restore(&v9).unwrap();
    assert_eq!(restored.nodes(), s.nodes());
    assert!(restored.operators().is_empty());
    // The same bytes labelled 10 are one byte short.
    v9[0] = 10;
    assert!(ClusterState::restore(&v9).is_err());
}
