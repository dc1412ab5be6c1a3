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
    assert_eq!(s.snapshot()[0], SNAPSHOT_VERSION);
    // Version 6 is version 7 (no services, so no task specs), which has no unlock key.
    let mut v6 = version_7(&s);
    // Version 5 had no secrets map at the end: the same bytes without its zero length.
    assert_eq!(v6.pop(), Some(0));
    v6[0] = 5;
    let restored = ClusterState::restore(&v6).unwrap();
    assert_eq!(restored.nodes(), s.nodes());
    assert!(restored.secrets().is_empty());
    v6[0] = 4;
    assert!(ClusterState::restore(&v6).is_err());
}

fn secret_ref(kind: SecretKind, id: SecretId, name: &str, target: &str) -> SecretRef {
    SecretRef {
        kind,
        id,
        name: name.into(),
        target: target.into(),
        uid: 0,
        gid: 0,
        mode: 0,
    }
}

fn create_service(s: &mut ClusterState, spec: &ServiceSpec) -> Result<(), ClusterError> {
    let index = s.applied() + 1;
    let cmd = Command::CreateService {
        spec: spec.clone(),
        at_ms: 9,
    };
    s.apply(index, &Command::decode(&cmd.encode()).unwrap())
}

#[test]
fn services_refer_to_secrets_that_exist_and_hold_them_until_they_let_go() {
    let mut s = cluster(1, 1);
    create(&mut s, SecretKind::Secret, spec("db", b"hunter2")).unwrap();
    create(&mut s, SecretKind::Config, spec("conf", b"a=1")).unwrap();
    let db = s.resolve_secret(SecretKind::Secret, "db").unwrap().id;
    let conf = s.resolve_secret(SecretKind::Config, "conf").unwrap().id;

    let mut web = ServiceSpec::new("web", "/bin/sleep", 1);
    web.task.secrets = vec![
        secret_ref(SecretKind::Secret, db, "db", "db"),
        secret_ref(SecretKind::Config, conf, "conf", "app/conf"),
    ];
    create_service(&mut s, &web).unwrap();
    let mut api = ServiceSpec::new("api", "/bin/sleep", 1);
    api.task.secrets = vec![secret_ref(SecretKind::Secret, db, "db", "password")];
    create_service(&mut s, &api).unwrap();

    // Kept across the encoding and a snapshot.
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    let svc = restored.resolve_service("web").unwrap();
    assert_eq!(svc.spec.task.secrets, web.task.secrets);

    // A reference to an object that does not exist, or of the other kind, is refused.
    let mut bad = ServiceSpec::new("bad", "/bin/sleep", 1);
    bad.task.secrets = vec![secret_ref(SecretKind::Config, db, "db", "db")];
    let e = create_service(&mut s, &bad).unwrap_err();
    assert!(e.to_string().contains("config db not found"), "{e}");
    bad.task.secrets = vec![secret_ref(SecretKind::Secret, 12345, "gone", "x")];
    assert!(create_service(&mut s, &bad).is_err());

    // In use: the removal names every service using it.
    let index = s.applied() + 1;
    let e = s
        .apply(
            index,
            &Command::RemoveSecret {
                kind: SecretKind::Secret,
                id: db,
                at_ms: 10,
            },
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "secret db is in use by the following services: api, web"
    );
    assert!(s.resolve_secret(SecretKind::Secret, "db").is_ok());

    // Once no service uses it, it goes.
    for name in ["web", "api"] {
        let id = s.resolve_service(name).unwrap().id;
        let index = s.applied() + 1;
        s.apply(index, &Command::RemoveService { id, at_ms: 11 })
            .unwrap();
    }
    let index = s.applied() + 1;
    s.apply(
        index,
        &Command::RemoveSecret {
            kind: SecretKind::Secret,
            id: db,
            at_ms: 12,
        },
    )
    .unwrap();
}

#[test]
fn secret_targets_and_modes_are_checked() {
    let ok = |kind, target: &str, process: bool| {
        validate_refs(&[secret_ref(kind, 1, "s", target)], process)
    };
    assert!(ok(SecretKind::Secret, "s", true).is_ok());
    assert!(ok(SecretKind::Secret, "certs/tls.key", true).is_ok());
    assert!(ok(SecretKind::Config, "/etc/app.conf", false).is_ok());
    for (target, process, want) in [
        ("/etc/app.conf", true, "must be a relative path"),
        ("../etc/passwd", false, "'..'"),
        ("a//b", false, "empty"),
        ("", false, "1 to 1024 bytes"),
        ("a\0b", true, "NUL"),
        ("/", false, "components"),
    ] {
        let e = ok(SecretKind::Secret, target, process).unwrap_err();
        assert!(e.to_string().contains(want), "{target:?}: {e}");
    }
    let mut m = secret_ref(SecretKind::Secret, 1, "s", "s");
    m.mode = 0o1777;
    assert!(validate_refs(&[m.clone()], false).is_err());
    m.mode = 0;
    assert_eq!(m.file_mode(true), 0o400);
    assert_eq!(m.file_mode(false), 0o444);
    assert_eq!(m.container_path(), "/run/secrets/s");
    let c = secret_ref(SecretKind::Config, 1, "c", "c");
    assert_eq!(c.container_path(), "/c");
    // Two files at one path.
    let e = validate_refs(
        &[
            secret_ref(SecretKind::Secret, 1, "a", "x"),
            secret_ref(SecretKind::Secret, 2, "b", "x"),
        ],
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("the target \"x\""), "{e}");
    // A secret and a config may share a name as a process task's files (two directories).
    assert!(validate_refs(
        &[
            secret_ref(SecretKind::Secret, 1, "a", "x"),
            secret_ref(SecretKind::Config, 2, "b", "x"),
        ],
        true,
    )
    .is_ok());
}

#[test]
fn commands_from_before_secrets_still_decode() {
    // Where the secrets field sits in an encoded service spec: where an empty and a one-entry
    // list first differ. The old encoding is the new one without that byte.
    let spec_with = |refs: Vec<SecretRef>| {
        let mut s = ServiceSpec::new("web", "/bin/sleep", 2);
        s.task.secrets = refs;
        Command::CreateService { spec: s, at_ms: 5 }.encode()
    };
    let empty = spec_with(Vec::new());
    let one = spec_with(vec![secret_ref(SecretKind::Secret, 1, "s", "s")]);
    let at = empty.iter().zip(&one).position(|(a, b)| a != b).unwrap();
    assert_eq!(empty[at], 0, "the empty list's length");
    let mut v3 = empty.clone();
    v3.remove(at);
    v3[0] = 3;
    assert_eq!(
        Command::decode(&v3).unwrap(),
        Command::decode(&empty).unwrap()
    );
    // The new version with the byte missing is malformed, not silently read as old.
    v3[0] = empty[0];
    assert!(Command::decode(&v3).is_err());
    v3[0] = 2;
    assert!(Command::decode(&v3).is_err());
}

#[test]
fn the_unlock_key_is_replicated_checked_and_read_from_older_snapshots() {
    let mut s = cluster(1, 1);
    assert_eq!(s.cluster().unwrap().unlock_key, "");
    let key = format_unlock_key(&[0xab; 32]);
    assert!(
        key.starts_with("SHOALKEY-1-") && key.len() == 11 + 64,
        "{key}"
    );
    assert_eq!(parse_unlock_key(&key).unwrap(), [0xab; 32]);
    assert_eq!(parse_unlock_key(&format!(" {key}\n")).unwrap(), [0xab; 32]);
    for bad in [
        "",
        "SHOALKEY-1-",
        "SWMKEY-1-abc",
        &key[..key.len() - 1],
        &key.replace('A', "G"),
    ] {
        let e = parse_unlock_key(bad).unwrap_err().to_string();
        assert!(e.contains("invalid unlock key"), "{bad}: {e}");
    }
    let apply = |s: &mut ClusterState, key: &str| {
        let index = s.applied() + 1;
        let cmd = Command::SetUnlockKey {
            key: key.into(),
            at_ms: 3,
        };
        s.apply(index, &Command::decode(&cmd.encode()).unwrap())
    };
    let empty_snapshot = s.snapshot();
    apply(&mut s, &key).unwrap();
    assert_eq!(s.cluster().unwrap().unlock_key, key);
    assert!(apply(&mut s, "SHOALKEY-1-nothex").is_err());
    assert_eq!(
        s.cluster().unwrap().unlock_key,
        key,
        "a refused key changes nothing"
    );
    let restored = ClusterState::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.cluster().unwrap().unlock_key, key);
    apply(&mut s, "").unwrap();
    assert_eq!(s.cluster().unwrap().unlock_key, "");

    // A version-7 snapshot is the same bytes without the key.
    let v7 = version_7(&ClusterState::restore(&empty_snapshot).unwrap());
    let old = ClusterState::restore(&v7).unwrap();
    assert_eq!(
        old.cluster(),
        ClusterState::restore(&empty_snapshot).unwrap().cluster()
    );
    assert_eq!(old.nodes(), s.nodes());
}

/// `s` (without an unlock key) as a version-7 snapshot: the same bytes without the key's empty
/// length, found where the snapshots with and without a key first differ.
fn version_7(s: &ClusterState) -> Vec<u8> {
    assert_eq!(s.cluster().unwrap().unlock_key, "");
    let empty = s.snapshot();
    let mut keyed = s.clone();
    let index = keyed.applied() + 1;
    keyed
        .apply(
            index,
            &Command::SetUnlockKey {
                key: format_unlock_key(&[1; 32]),
                at_ms: 1,
            },
        )
        .unwrap();
    let keyed = keyed.snapshot();
    let at = empty.iter().zip(&keyed).position(|(a, b)| a != b).unwrap();
    assert_eq!(empty[at], 0, "the empty key's length");
    let mut v7 = empty;
    v7.remove(at);
    // Nor the operators map (version 10) at the end.
    assert_eq!(v7.pop(), Some(0), "the empty operators map");
    v7[0] = 7;
    v7
}
