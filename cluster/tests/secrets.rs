//! Secrets and configs in the replicated state: created with unique names per kind, resolved by
//! name or id prefix, a 500 KiB one fitting in one command, removed, kept across snapshots, and
//! refused before `swarm init`, with a duplicate name, empty or too large.

use shoal_cluster::*;

mod common;
use common::cluster;

fn spec(name: &str, data: &[u8]) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        labels: [("team".to_string(), "a".to_string())].into(),
        data: data.to_vec(),
    }
}

fn create(s: &mut ClusterState, kind: SecretKind, spec: SecretSpec) -> Result<(), ClusterError> {
    let index = s.applied() + 1;
    let cmd = Command::CreateSecret {
        kind,
        spec,
        at_ms: 7,
    };
    // Through the encoding, as Raft carries it.
    let cmd = Command::decode(&cmd.encode()).unwrap();
    s.apply(index, &cmd)
}

#[test]
fn secrets_and_configs_are_created_resolved_and_removed() {
    let mut s = cluster(1, 1);
    create(&mut s, SecretKind::Secret, spec("db", b"hunter2")).unwrap();
    // The same name as a config is another object; as a secret again, refused.
    create(&mut s, SecretKind::Config, spec("db", b"port=5432")).unwrap();
    let e = create(&mut s, SecretKind::Secret, spec("db", b"x")).unwrap_err();
    assert!(e.to_string().contains("secret db already exists"), "{e}");
    assert_eq!(s.secrets().len(), 2);

    let secret = s.resolve_secret(SecretKind::Secret, "db").unwrap().clone();
    assert_eq!(secret.spec.data, b"hunter2");
    assert_eq!(secret.created_at_ms, 7);
    assert_eq!(secret.spec.labels["team"], "a");
    let config = s.resolve_secret(SecretKind::Config, "db").unwrap().clone();
    assert_ne!(secret.id, config.id);
    let prefix = &object_id_string(secret.id)[..5];
    assert_eq!(
        s.resolve_secret(SecretKind::Secret, prefix).unwrap().id,
        secret.id
    );
    assert!(s
        .resolve_secret(SecretKind::Secret, "nope")
        .unwrap_err()
        .to_string()
        .contains("secret nope not found"));

    // Kept across a snapshot.
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.secrets(), s.secrets());

    // Removed by kind: a config's id does not remove a secret.
    let index = s.applied() + 1;
    let e = s
        .apply(
            index,
            &Command::RemoveSecret {
                kind: SecretKind::Secret,
                id: config.id,
                at_ms: 8,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
    let index = s.applied() + 1;
    s.apply(
        index,
        &Command::RemoveSecret {
            kind: SecretKind::Secret,
            id: secret.id,
            at_ms: 8,
        },
    )
    .unwrap();
    assert!(s.resolve_secret(SecretKind::Secret, "db").is_err());
    assert!(s.resolve_secret(SecretKind::Config, "db").is_ok());
}

#[test]
fn sizes_names_and_the_uninitialised_state_are_checked() {
    let mut s = cluster(1, 0);
    // The largest secret fits in one command.
    let big = spec("big", &vec![0xa5; MAX_SECRET_BYTES]);
    assert!(
        Command::CreateSecret {
            kind: SecretKind::Secret,
            spec: big.clone(),
            at_ms: 1
        }
        .encode()
        .len()
            <= MAX_COMMAND_SIZE
    );
    create(&mut s, SecretKind::Secret, big).unwrap();
    for (bad, want) in [
        (spec("huge", &vec![0; MAX_SECRET_BYTES + 1]), "500 KiB"),
        (spec("empty", b""), "empty"),
        (spec("-bad", b"x"), "invalid secret name"),
    ] {
        let e = create(&mut s, SecretKind::Secret, bad).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
    }
    let mut fresh = ClusterState::new();
    assert!(create(&mut fresh, SecretKind::Config, spec("a", b"x")).is_err());
}

#[test]
fn a_snapshot_from_before_secrets_still_restores() {
    let s = cluster(1, 2);
    let mut v6 = s.snapshot();
    assert_eq!(v6[0], SNAPSHOT_VERSION);
    // Version 5 had no secrets map at the end: the same bytes without its zero length.
    assert_eq!(v6.pop(), Some(0));
    v6[0] = 5;
    let restored = ClusterState::restore(&v6).unwrap();
    assert_eq!(restored.nodes(), s.nodes());
    assert!(restored.secrets().is_empty());
    v6[0] = 4;
    assert!(ClusterState::restore(&v6).is_err());
}
