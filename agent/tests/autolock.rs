//! Autolock and demotion on real agents. With autolock on, every manager's key-encryption key
//! is sealed with the swarm's unlock key: a manager restarted without the key serves nothing
//! (every request but `info` and `swarm unlock` says it is locked) and joins nothing (the
//! others see it down); a wrong or malformed key is refused and changes nothing; the right key
//! starts it and it catches up with what changed meanwhile; turning autolock on also gave every
//! manager a new data key, and once snapshots compacted the log the old one is forgotten. A
//! rotated key replaces the old one;
//! autolock off stores the key plain again. A demoted manager keeps only its term and vote:
//! no log, no snapshot, no data key, so no copy of the CA key, tokens or secrets; promoted
//! again, it catches up from the leader.

mod common;

use std::path::Path;

use common::{serial, Cluster};

/// The key a command printed (`SHOALKEY-1-…`).
fn key_in(text: &str) -> String {
    text.split_whitespace()
        .find(|w| w.starts_with("SHOALKEY-1-"))
        .unwrap_or_else(|| panic!("no unlock key in {text:?}"))
        .to_string()
}

fn kek_locked(dir: &Path) -> Option<bool> {
    let b = std::fs::read(dir.join("kek")).ok()?;
    Some(b.starts_with(b"SHOALKEK1"))
}

/// The current data key and the ids of those kept (`raft-keys`).
fn data_keys(dir: &Path) -> (u64, Vec<u64>) {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("raft-keys")).unwrap()).unwrap();
    let ids = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_u64().unwrap())
        .collect();
    (v["current"].as_u64().unwrap(), ids)
}

/// Whether the node key is sealed (else it is a plain PEM).
fn node_key_sealed(dir: &Path) -> bool {
    let b = std::fs::read(dir.join("key.pem")).unwrap();
    let sealed = b.starts_with(b"SHOAL-SEALED-KEY-1");
    assert_eq!(
        sealed,
        !b.windows(11).any(|w| w == b"PRIVATE KEY"),
        "a key file is either sealed or a PEM"
    );
    sealed
}

fn service_names(c: &Cluster, i: usize) -> Option<String> {
    let out = c.shoal(i, &["service", "ls"]);
    (out.code == 0).then_some(out.stdout)
}

#[test]
fn a_locked_manager_waits_for_its_key_and_then_catches_up() {
    let _g = serial();
    let mut c = Cluster::start_with_env(
        3,
        &[
            ("SHOAL_SNAPSHOT_EVERY", "20"),
            ("SHOAL_SNAPSHOT_TRAILING", "5"),
        ],
    );
    c.form(3);
    assert_eq!(data_keys(&c.nodes[0].dir), (1, vec![1]));
    let out = c.shoal(0, &["swarm", "update", "--autolock=true"]).ok();
    assert!(
        out.contains("Swarm updated.") && out.contains("shoal swarm unlock"),
        "{out}"
    );
    let key = key_in(&out);
    // Any manager shows the same key.
    assert_eq!(c.shoal(1, &["swarm", "unlock-key", "-q"]).ok().trim(), key);
    c.wait("every manager's keys sealed with the unlock key", || {
        c.nodes
            .iter()
            .all(|n| kek_locked(&n.dir) == Some(true) && node_key_sealed(&n.dir))
            .then_some(())
    });
    // A new data key with the new key: once snapshots have compacted the log, what the old
    // data key sealed is gone, and so is the old key.
    c.label_writes(30);
    c.wait("every manager on a single, new data key", || {
        c.nodes
            .iter()
            .all(|n| data_keys(&n.dir) == (2, vec![2]))
            .then_some(())
    });
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "before",
            "--runtime",
            "process",
            "sleep",
            "100000",
        ],
    )
    .ok();

    // Restarted without the key: locked, serving nothing.
    c.kill(2);
    c.spawn(2);
    let err = c.shoal(2, &["node", "ls"]).err();
    assert!(
        err.contains("this node is locked: run shoal swarm unlock"),
        "{err}"
    );
    let err = c.shoal(2, &["service", "ls"]).err();
    assert!(err.contains("locked"), "{err}");
    let info = c.shoal(2, &["info"]).ok();
    assert!(info.contains("locked"), "{info}");
    // …and joining nothing: the others see it down.
    c.wait("the locked manager seen down", || {
        let ls = c.ls(0)?;
        let n = ls.iter().find(|n| n["Hostname"] == "node-3")?;
        (n["Status"] == "Down").then_some(())
    });
    // The swarm goes on with two managers.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "while-locked",
            "--runtime",
            "process",
            "sleep",
            "100001",
        ],
    )
    .ok();

    // A wrong key and a malformed one: refused, still locked.
    let wrong = format!("SHOALKEY-1-{}", "0".repeat(64));
    let err = c
        .shoal_with_input(2, &["swarm", "unlock"], &format!("{wrong}\n"))
        .err();
    assert!(err.contains("invalid unlock key"), "{err}");
    let err = c
        .shoal_with_input(2, &["swarm", "unlock"], "SWMKEY-1-abc\n")
        .err();
    assert!(
        err.contains("invalid unlock key: expected SHOALKEY-1-"),
        "{err}"
    );
    assert!(c.shoal(2, &["node", "ls"]).err().contains("locked"));
    assert_eq!(kek_locked(&c.nodes[2].dir), Some(true));

    // The right key: it starts and catches up.
    c.shoal_with_input(2, &["swarm", "unlock"], &format!("{key}\n"))
        .ok();
    c.wait(
        "the unlocked manager to serve what changed while it was locked",
        || {
            let ls = service_names(&c, 2)?;
            (ls.contains("before") && ls.contains("while-locked")).then_some(())
        },
    );
    c.wait("the unlocked manager Ready again", || {
        let ls = c.ls(0)?;
        let n = ls.iter().find(|n| n["Hostname"] == "node-3")?;
        (n["Status"] == "Ready" && n["ManagerStatus"] == "Reachable").then_some(())
    });
    let err = c
        .shoal_with_input(2, &["swarm", "unlock"], &format!("{key}\n"))
        .err();
    assert!(err.contains("not locked"), "{err}");

    // A rotated key: the old one no longer opens a restarted manager.
    let before: Vec<Vec<u8>> = c
        .nodes
        .iter()
        .map(|n| std::fs::read(n.dir.join("kek")).unwrap())
        .collect();
    let out = c.shoal(1, &["swarm", "unlock-key", "--rotate"]).ok();
    assert!(
        out.contains("Successfully rotated manager unlock key."),
        "{out}"
    );
    let new_key = key_in(&out);
    assert_ne!(new_key, key);
    assert_eq!(
        c.shoal(0, &["swarm", "unlock-key", "-q"]).ok().trim(),
        new_key
    );
    c.wait("every manager resealed with the new key", || {
        c.nodes
            .iter()
            .zip(&before)
            .all(|(n, old)| std::fs::read(n.dir.join("kek")).ok().as_ref() != Some(old))
            .then_some(())
    });
    c.kill(1);
    c.spawn(1);
    let err = c
        .shoal_with_input(1, &["swarm", "unlock"], &format!("{key}\n"))
        .err();
    assert!(err.contains("invalid unlock key"), "{err}");
    c.shoal_with_input(1, &["swarm", "unlock"], &format!("{new_key}\n"))
        .ok();
    c.wait("the manager unlocked with the new key to serve", || {
        service_names(&c, 1)?.contains("while-locked").then_some(())
    });

    // Autolock off: the key-encryption key is stored plain; a restart needs no key.
    let out = c.shoal(0, &["swarm", "update", "--autolock=false"]).ok();
    assert!(out.contains("autolock is off"), "{out}");
    let err = c.shoal(0, &["swarm", "unlock-key"]).err();
    assert!(err.contains("autolock is off"), "{err}");
    c.wait("every key-encryption key and node key plain again", || {
        c.nodes
            .iter()
            .all(|n| kek_locked(&n.dir) == Some(false) && !node_key_sealed(&n.dir))
            .then_some(())
    });
    c.kill(0);
    c.spawn(0);
    c.wait("the restarted manager to serve without a key", || {
        service_names(&c, 0)?.contains("before").then_some(())
    });
}

#[test]
fn init_with_autolock_shows_the_key_once_and_locks_a_restart() {
    let _g = serial();
    let mut c = Cluster::start(1);
    let out = c.shoal(0, &["swarm", "init", "--autolock"]).ok();
    assert!(out.contains("Swarm initialized"), "{out}");
    let key = key_in(&out);
    c.wait("the key-encryption key sealed", || {
        (kek_locked(&c.nodes[0].dir) == Some(true)).then_some(())
    });
    c.kill(0);
    c.spawn(0);
    assert!(c.shoal(0, &["node", "ls"]).err().contains("locked"));
    c.shoal_with_input(0, &["swarm", "unlock"], &format!("{key}\n"))
        .ok();
    c.wait("the only manager to lead again", || {
        let ls = c.ls(0)?;
        (ls.len() == 1 && ls[0]["ManagerStatus"] == "Leader").then_some(())
    });

    // A lost key: locked again, the only way out is to leave (with --force) and start over.
    c.kill(0);
    c.spawn(0);
    let err = c.shoal(0, &["swarm", "leave"]).err();
    assert!(err.contains("shoal swarm leave --force"), "{err}");
    let out = c.shoal(0, &["swarm", "leave", "--force"]).ok();
    assert!(out.contains("Node left the swarm."), "{out}");
    assert!(c.shoal(0, &["info"]).ok().contains("Swarm: inactive"));
    for f in ["kek", "raft-keys", "key.pem", "node.json"] {
        assert!(!c.nodes[0].dir.join(f).exists(), "{f}");
    }
    c.shoal(0, &["swarm", "init"]).ok();
    c.wait("a new swarm led by this node", || {
        let ls = c.ls(0)?;
        (ls.len() == 1 && ls[0]["ManagerStatus"] == "Leader").then_some(())
    });
    assert_eq!(kek_locked(&c.nodes[0].dir), Some(false));
}

#[test]
fn a_demoted_manager_keeps_no_readable_state_and_catches_up_when_promoted() {
    let _g = serial();
    let mut c = Cluster::start(3);
    c.form(3);
    // Under autolock, so that the node key is sealed until the demotion unseals it.
    c.shoal(0, &["swarm", "update", "--autolock"]).ok();
    c.wait("node-3's node key sealed", || {
        node_key_sealed(&c.nodes[2].dir).then_some(())
    });
    let marker = format!("demoted-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s");
    std::fs::write(&f, &marker).unwrap();
    c.shoal(0, &["secret", "create", "kept", f.to_str().unwrap()])
        .ok();
    c.shoal(0, &["node", "demote", "node-3"]).ok();
    let raft = c.nodes[2].dir.join("raft");
    c.wait("node-3 retired: only its term and vote kept", || {
        (raft.join("retired.json").exists() && !raft.join("wal").exists()).then_some(())
    });
    let entries: Vec<String> = std::fs::read_dir(&raft)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(entries, ["retired.json"]);
    let retired: serde_json::Value =
        serde_json::from_slice(&std::fs::read(raft.join("retired.json")).unwrap()).unwrap();
    assert!(retired["term"].as_u64().unwrap() >= 1, "{retired}");
    assert!(!c.nodes[2].dir.join("kek").exists());
    assert!(!c.nodes[2].dir.join("raft-keys").exists());
    // A worker now: its node key is plain again, and it restarts without an unlock key.
    assert!(!node_key_sealed(&c.nodes[2].dir));
    c.kill(2);
    c.spawn(2);
    c.wait("the demoted node Ready after its restart", || {
        let ls = c.ls(0)?;
        let n = ls.iter().find(|n| n["Hostname"] == "node-3")?;
        (n["Status"] == "Ready").then_some(())
    });

    // Changes while it is a worker, then promoted again: it catches up.
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "after",
            "--runtime",
            "process",
            "sleep",
            "100000",
        ],
    )
    .ok();
    c.shoal(0, &["node", "promote", "node-3"]).ok();
    c.wait("node-3 a voter again, serving the current state", || {
        let ls = service_names(&c, 2)?;
        let nodes = c.ls(0)?;
        let n = nodes.iter().find(|n| n["Hostname"] == "node-3")?;
        (ls.contains("after") && n["ManagerStatus"] == "Reachable").then_some(())
    });
    assert!(c.shoal(2, &["secret", "ls"]).ok().contains("kept"));
    assert!(!raft.join("retired.json").exists());
    assert!(raft.join("wal").exists());
}
