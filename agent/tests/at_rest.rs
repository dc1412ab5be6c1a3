//! Raft data encrypted at rest, checked the way an attacker with a copy of the disk would look:
//! on three real managers and a worker (snapshots every 20 entries), a service whose spec carries a unique
//! marker and the join tokens are searched for in every file of every node's `raft/` directory
//! (WAL segments and snapshots), plain and as they would appear hex- or JSON-encoded, together
//! with the PEM header of the CA key; none is found. A secret holding the marker is created,
//! listed and inspected from two managers without its data ever being shown (a config's is),
//! refused on a worker, when its name is taken and over 500 KiB, and removed. A manager killed and restarted reads its
//! encrypted log back and serves the same state.

mod common;

use common::{files, forms, found_in, rand_u64, serial, Cluster};

#[test]
fn raft_data_on_disk_reveals_neither_state_nor_secrets() {
    let _g = serial();
    let mut c = Cluster::start_with_env(4, &[("SHOAL_SNAPSHOT_EVERY", "20")]);
    c.form(3);
    let marker = format!("marker-{:016x}", rand_u64());
    let manager_token = c
        .shoal(0, &["swarm", "join-token", "-q", "manager"])
        .ok()
        .trim()
        .to_string();
    let worker_token = c
        .shoal(0, &["swarm", "join-token", "-q", "worker"])
        .ok()
        .trim()
        .to_string();
    c.shoal(
        0,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "marked",
            "--runtime",
            "process",
            "-e",
            &format!("SECRET={marker}"),
            "sleep",
            "100000",
        ],
    )
    .ok();
    // A secret holding the marker, and a config: the secret's data is never shown back.
    let secret_file = c.tmp.path().join("secret.txt");
    std::fs::write(&secret_file, format!("pw-{marker}")).unwrap();
    let sid = c
        .shoal(
            0,
            &[
                "secret",
                "create",
                "-l",
                "team=db",
                "db_pw",
                secret_file.to_str().unwrap(),
            ],
        )
        .ok();
    assert_eq!(sid.trim().len(), 16, "{sid}");
    let config_file = c.tmp.path().join("app.conf");
    std::fs::write(&config_file, "port=5432\n").unwrap();
    c.shoal(
        0,
        &[
            "config",
            "create",
            "app_conf",
            config_file.to_str().unwrap(),
        ],
    )
    .ok();
    for i in 0..2 {
        let ls = c.shoal(i, &["secret", "ls"]).ok();
        assert!(ls.contains("db_pw") && ls.contains(sid.trim()), "{ls}");
        let inspect = c.shoal(i, &["secret", "inspect", "db_pw"]).ok();
        assert!(inspect.contains("\"team\": \"db\""), "{inspect}");
        assert!(
            !inspect.contains(&marker),
            "a secret's data is never shown: {inspect}"
        );
        let pretty = c
            .shoal(i, &["config", "inspect", "--pretty", "app_conf"])
            .ok();
        assert!(pretty.contains("Data:\nport=5432\n"), "{pretty}");
    }
    let err = c.shoal(3, &["secret", "ls"]).err();
    assert!(err.contains("not a swarm manager"), "{err}");
    let err = c
        .shoal(
            1,
            &["secret", "create", "db_pw", secret_file.to_str().unwrap()],
        )
        .err();
    assert!(err.contains("secret db_pw already exists"), "{err}");
    let big = c.tmp.path().join("big");
    std::fs::write(&big, vec![b'x'; 500 * 1024 + 1]).unwrap();
    let err = c
        .shoal(0, &["secret", "create", "big", big.to_str().unwrap()])
        .err();
    assert!(err.contains("500 KiB"), "{err}");
    std::fs::write(&big, vec![b'x'; 500 * 1024]).unwrap();
    c.shoal(1, &["secret", "create", "big", big.to_str().unwrap()])
        .ok();
    c.shoal(0, &["secret", "rm", "big"]).ok();
    let err = c.shoal(0, &["secret", "inspect", "big"]).err();
    assert!(err.contains("secret big not found"), "{err}");

    // Enough changes for snapshots on every manager.
    c.label_writes(30);
    c.wait_snapshots(3);

    let mut needles = Vec::new();
    for s in [
        marker.as_str(),
        manager_token.as_str(),
        worker_token.as_str(),
        "PRIVATE KEY",
    ] {
        needles.extend(forms(s));
    }
    let mut looked = 0;
    for n in &c.nodes[..3] {
        for p in files(&n.dir.join("raft")) {
            looked += 1;
            assert!(
                !found_in(&p, &needles),
                "{} holds a secret in clear",
                p.display()
            );
        }
    }
    assert!(looked >= 6, "segments and snapshots of three managers");

    // The log is read back: a manager restarted from its encrypted data serves the same state.
    c.kill(1);
    c.spawn(1);
    c.wait("the restarted manager to serve the service", || {
        let out = c.shoal(1, &["service", "inspect", "marked"]);
        (out.code == 0 && out.stdout.contains(&marker)).then_some(())
    });
    c.wait("the restarted manager to see the labels", || {
        let out = c.shoal(1, &["node", "inspect", "node-1"]);
        (out.code == 0 && out.stdout.contains("k29")).then_some(())
    });
}
