//! Secrets and configs given to tasks, on real agents: a process service on the worker reads
//! its secret under `$SHOAL_SECRETS_DIR` (mode 0400) and its config under `$SHOAL_CONFIGS_DIR`
//! and prints a hash of the secret; only the worker running the task has the files, on the
//! tmpfs; `secret rm` is refused while the service uses it, naming it; rotation with
//! `--secret-rm`/`--secret-add` rolls the task onto the new secret and removes the old task's
//! files; after all that, the secrets' random markers are in no file of any node (data
//! directories with their WAL, snapshots and task output, and the agents' logs), plain or as
//! JSON or hex would write them. A container gets its secret read-only at /run/secrets/NAME.

mod common;

use std::path::{Path, PathBuf};

use common::{files, forms, found_in, rand_u64, serial, Cluster};

fn sha256(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a secret from `data` through a file outside the cluster's directories (removed at
/// once, so that the search below looks only at what shoal wrote).
fn create_secret(c: &Cluster, kind: &str, name: &str, data: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("in");
    std::fs::write(&f, data).unwrap();
    c.shoal(0, &[kind, "create", name, f.to_str().unwrap()])
        .ok();
}

/// The task directories on the tmpfs of node `id`.
fn task_dirs(node_id: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(Path::new("/dev/shm/shoal").join(node_id)) else {
        return Vec::new();
    };
    entries.flatten().map(|e| e.path()).collect()
}

fn node_id(c: &Cluster, name: &str) -> String {
    c.inspect(0, name).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn tasks_get_their_secrets_in_memory_and_nothing_else_keeps_them() {
    let _g = serial();
    let c = Cluster::start_with_env(4, &[("SHOAL_SNAPSHOT_EVERY", "20")]);
    c.form(3);
    let marker = format!("marker-{:016x}", rand_u64());
    let marker2 = format!("rotated-{:016x}", rand_u64() ^ 0x55);
    create_secret(&c, "secret", "db_pw", &format!("pw-{marker}"));
    create_secret(&c, "secret", "db_pw2", &format!("pw2-{marker2}"));
    create_secret(&c, "config", "app_conf", "greeting=hello\n");
    let hash = sha256(format!("pw-{marker}").as_bytes());
    let hash2 = sha256(format!("pw2-{marker2}").as_bytes());

    let script = r#"echo "hash $(sha256sum "$SHOAL_SECRETS_DIR/db_pw" | cut -d' ' -f1)"; echo "mode $(stat -c %a "$SHOAL_SECRETS_DIR/db_pw")"; cat "$SHOAL_CONFIGS_DIR/app.conf"; exec sleep 100000"#;
    c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "reader",
            "--runtime",
            "process",
            "--constraint",
            "node.role==worker",
            "--secret",
            "db_pw",
            "--config",
            "source=app_conf,target=app.conf",
            "sh",
            "-c",
            script,
        ],
    )
    .ok();
    c.wait("the task to print the secret's hash", || {
        let logs = c.shoal(0, &["service", "logs", "reader"]).stdout;
        (logs.contains(&format!("hash {hash}"))
            && logs.contains("mode 400")
            && logs.contains("greeting=hello"))
        .then_some(())
    });
    let pretty = c
        .shoal(0, &["service", "inspect", "--pretty", "reader"])
        .ok();
    assert!(
        pretty.contains("db_pw -> $SHOAL_SECRETS_DIR/db_pw (uid 0, gid 0, mode 0400)"),
        "{pretty}"
    );

    // Only the worker running the task has its files.
    let worker = node_id(&c, "node-4");
    let dirs = task_dirs(&worker);
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let first_task = dirs[0].clone();
    assert_eq!(
        std::fs::read_to_string(first_task.join("secrets/db_pw")).unwrap(),
        format!("pw-{marker}")
    );
    for m in ["node-1", "node-2", "node-3"] {
        assert!(task_dirs(&node_id(&c, m)).is_empty(), "{m}");
    }

    // In use: refused, naming the service.
    let err = c.shoal(1, &["secret", "rm", "db_pw"]).err();
    assert!(
        err.contains("secret db_pw is in use by the following service: reader"),
        "{err}"
    );
    let err = c
        .shoal(0, &["service", "update", "--secret-add", "nope", "reader"])
        .err();
    assert!(err.contains("secret nope not found"), "{err}");

    // Rotation: the same file, another secret; the task is replaced.
    c.shoal(
        0,
        &[
            "service",
            "update",
            "--secret-rm",
            "db_pw",
            "--secret-add",
            "source=db_pw2,target=db_pw",
            "reader",
        ],
    )
    .ok();
    c.wait("the new task to print the new hash", || {
        let logs = c.shoal(0, &["service", "logs", "reader"]).stdout;
        logs.contains(&format!("hash {hash2}")).then_some(())
    });
    c.wait("the old task's files to be removed", || {
        let dirs = task_dirs(&worker);
        (dirs.len() == 1 && dirs[0] != first_task).then_some(())
    });
    c.shoal(0, &["secret", "rm", "db_pw"]).ok();

    // Snapshots on every manager, then the search.
    c.label_writes(25);
    c.wait_snapshots(3);
    let mut needles = forms(&marker);
    needles.extend(forms(&marker2));
    let all = files(c.tmp.path());
    assert!(all.len() > 20, "{all:?}");
    let logs = all
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .count();
    assert!(logs >= 5, "the agents' and the tasks' logs: {all:?}");
    for p in &all {
        assert!(!found_in(p, &needles), "{} holds a secret", p.display());
    }
    let pem = forms("PRIVATE KEY");
    for n in &c.nodes[..3] {
        for p in files(&n.dir.join("raft")) {
            assert!(!found_in(&p, &pem), "{} holds the CA key", p.display());
        }
    }

    // The service gone, its files are gone.
    c.shoal(0, &["service", "rm", "reader"]).ok();
    c.wait("the task's files to be removed", || {
        task_dirs(&worker).is_empty().then_some(())
    });
    c.shoal(0, &["secret", "rm", "db_pw2"]).ok();
}

#[test]
fn a_container_gets_its_secret_read_only_at_run_secrets() {
    let _g = serial();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if rt
        .block_on(shoal_executor::test_image::engine_for_tests(
            "shoal-secret-tests",
        ))
        .is_none()
    {
        assert!(
            std::env::var("SHOAL_REQUIRE_DOCKER").as_deref() != Ok("1"),
            "no usable Docker Engine, and SHOAL_REQUIRE_DOCKER=1"
        );
        eprintln!("skipped: no usable Docker Engine");
        return;
    }
    let c = Cluster::start(1);
    c.form(1);
    let marker = format!("ctr-{:016x}", rand_u64());
    create_secret(&c, "secret", "api_key", &marker);
    create_secret(&c, "config", "site", "listen=80\n");
    let script = r#"echo "hash $(sha256sum /run/secrets/api_key | cut -d' ' -f1)"; echo "mode $(stat -c '%a %u:%g' /run/secrets/api_key)"; cat /etc/site.conf; (echo x > /run/secrets/api_key) 2>/dev/null && echo WRITABLE || echo READ-ONLY; exec sleep 100000"#;
    c.shoal(
        0,
        &[
            "service",
            "create",
            "--name",
            "ctr",
            "--secret",
            "source=api_key,uid=1000,gid=1001,mode=0440",
            "--config",
            "source=site,target=/etc/site.conf",
            shoal_executor::test_image::DEFAULT_TAG,
            "sh",
            "-c",
            script,
        ],
    )
    .ok();
    let hash = sha256(marker.as_bytes());
    c.wait("the container to print the secret's hash", || {
        let logs = c.shoal(0, &["service", "logs", "ctr"]).stdout;
        (logs.contains(&format!("hash {hash}")) && logs.contains("READ-ONLY")).then_some(logs)
    });
    let logs = c.shoal(0, &["service", "logs", "ctr"]).stdout;
    assert!(logs.contains("mode 440 1000:1001"), "{logs}");
    assert!(logs.contains("listen=80"), "{logs}");
    assert!(!logs.contains("WRITABLE"), "{logs}");
    let id = node_id(&c, "node-1");
    assert_eq!(task_dirs(&id).len(), 1);
    c.shoal(0, &["service", "rm", "ctr"]).ok();
    c.wait("the container's files to be removed", || {
        task_dirs(&id).is_empty().then_some(())
    });
}

#[test]
fn a_stack_brings_its_secrets_and_configs_and_takes_them_away() {
    let _g = serial();
    let c = Cluster::start(1);
    c.form(1);
    let app = c.tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    let marker = format!("stack-{:016x}", rand_u64());
    std::fs::write(app.join("db_pw.txt"), &marker).unwrap();
    let compose = r#"
services:
  reader:
    x-shoal-runtime: process
    command:
      - sh
      - -c
      - 'echo "hash $$(sha256sum "$$SHOAL_SECRETS_DIR/password" | cut -d" " -f1)"; cat "$$SHOAL_SECRETS_DIR/shared"; cat "$$SHOAL_CONFIGS_DIR/app.conf"; exec sleep 100000'
    secrets:
      - source: db_pw
        target: password
      - shared
    configs:
      - source: conf
        target: app.conf
secrets:
  db_pw:
    file: ./db_pw.txt
  shared:
    external: true
configs:
  conf:
    content: |
      level=debug
"#;
    std::fs::write(app.join("docker-compose.yml"), compose).unwrap();
    let file = app.join("docker-compose.yml");
    let file = file.to_str().unwrap();

    // The external secret must exist first.
    let err = c.shoal(0, &["stack", "deploy", "-c", file, "app"]).err();
    assert!(
        err.contains("secret shared is external but does not exist"),
        "{err}"
    );
    assert!(!c.shoal(0, &["secret", "ls"]).ok().contains("app_db_pw"));
    create_secret(&c, "secret", "shared", "shared-value\n");

    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Creating secret app_db_pw"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Creating config app_conf"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("Ignoring"), "{}", out.stderr);
    let hash = sha256(marker.as_bytes());
    c.wait("the stack's task to read its files", || {
        let logs = c.shoal(0, &["service", "logs", "app_reader"]).stdout;
        (logs.contains(&format!("hash {hash}"))
            && logs.contains("shared-value")
            && logs.contains("level=debug"))
        .then_some(())
    });
    let inspect = c.shoal(0, &["secret", "inspect", "app_db_pw"]).ok();
    assert!(
        inspect.contains("\"com.docker.stack.namespace\": \"app\""),
        "{inspect}"
    );

    // Deployed again unchanged: nothing created, nothing updated.
    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]).ok();
    assert!(!out.contains("Creating"), "{out}");
    assert!(out.contains("Service app_reader is up to date"), "{out}");

    // A secret's content cannot change under the same name.
    std::fs::write(app.join("db_pw.txt"), "another").unwrap();
    let err = c.shoal(0, &["stack", "deploy", "-c", file, "app"]).err();
    assert!(
        err.contains("secret app_db_pw exists with other content"),
        "{err}"
    );

    // Removed with the stack; the external one stays.
    let out = c.shoal(0, &["stack", "rm", "app"]).ok();
    assert!(out.contains("Removing secret app_db_pw"), "{out}");
    assert!(out.contains("Removing config app_conf"), "{out}");
    let ls = c.shoal(0, &["secret", "ls"]).ok();
    assert!(!ls.contains("app_db_pw") && ls.contains("shared"), "{ls}");
    assert!(!c.shoal(0, &["config", "ls"]).ok().contains("app_conf"));
    assert!(!c
        .command_lines()
        .iter()
        .any(|l| l.contains("SHOAL_SECRETS_DIR")));
}
