//! Stacks on real agents, as an operator runs them: a three-service Compose file (process
//! tasks, a `.env`, an `env_file`, unsupported keys warned) deployed and followed until it has
//! converged, redeployed unchanged (nothing touched) and edited (a rolling update), a malformed
//! edit refused with nothing changed, `--prune`, a worker's view, and `stack rm` returning only
//! once every task process is gone, so that an immediate redeploy works. A second scenario
//! deploys containers of a locally built image from a file written like the Docker
//! documentation's, with the `deploy:` keys, and removes it.

mod common;

use std::path::Path;

use common::{serial, Cluster};
use serde_json::Value;

fn inspect(c: &Cluster, service: &str) -> Value {
    let out = c.shoal(0, &["service", "inspect", service]).ok();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

/// `stack services` rows as (name, replicas).
fn services(c: &Cluster, stack: &str) -> Vec<(String, String)> {
    let out = c.shoal(0, &["stack", "services", stack]).ok();
    out.lines()
        .skip(1)
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            (cols[1].to_string(), cols[3].to_string())
        })
        .collect()
}

const COMPOSE: &str = r#"# A stack of three process services.
version: "3.8"
services:
  web:
    x-shoal-runtime: process
    command: ["sleep", "${WEB_SLEEP}"]
    environment:
      - ROLE=web
    deploy:
      replicas: ${WEB_REPLICAS:-1}
      update_config:
        parallelism: 1
        delay: 0s
        order: start-first
        failure_action: rollback
  api:
    x-shoal-runtime: process
    command: sleep 100001
    env_file: api.env
    stop_grace_period: 5s
    deploy:
      replicas: 2
      resources:
        limits:
          memory: 64M
      restart_policy:
        condition: any
        delay: 1s
  agent:
    x-shoal-runtime: process
    command: sleep 100002
    build: ./agent
    depends_on: [api]
    deploy:
      mode: global
"#;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn a_stack_deploys_updates_prunes_and_is_removed_only_when_its_tasks_are_gone() {
    let _g = serial();
    let c = Cluster::start(3);
    c.form(1);
    let app = c.tmp.path().join("app");
    std::fs::create_dir(&app).unwrap();
    write(&app, ".env", "WEB_SLEEP=100000\nWEB_REPLICAS=3\n");
    write(&app, "api.env", "API_KEY=abc\n");
    write(&app, "docker-compose.yml", COMPOSE);
    let file = app.join("docker-compose.yml");
    let file = file.to_str().unwrap();

    // A worker cannot deploy, and says why.
    let err = c.shoal(2, &["stack", "deploy", "-c", file, "app"]).err();
    assert!(err.contains("manager"), "{err}");

    // Deploy: created, warned about what is ignored, followed until converged.
    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stderr
            .contains("Ignoring unsupported options for service agent: build, depends_on"),
        "{}",
        out.stderr
    );
    for s in ["app_agent", "app_api", "app_web"] {
        assert!(
            out.stdout.contains(&format!("Creating service {s}")),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout
                .contains(&format!("verify: Service {s} converged")),
            "{}",
            out.stdout
        );
    }
    // Returned once converged: every task runs now (3 web, 2 api, one agent per node).
    assert_eq!(c.processes(), 8, "{:?}", c.command_lines());
    let web = inspect(&c, "app_web");
    assert_eq!(
        web["spec"]["labels"]["com.docker.stack.namespace"], "app",
        "{web}"
    );
    assert!(
        web["spec"]["task"]["env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("ROLE=web")),
        "{web}"
    );
    let api = inspect(&c, "app_api");
    assert!(
        api["spec"]["task"]["env"]
            .as_array()
            .unwrap()
            .contains(&Value::from("API_KEY=abc")),
        "{api}"
    );

    let ls = c.shoal(0, &["stack", "ls"]).ok();
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        ["NAME   SERVICES", "app    3"],
        "{ls}"
    );
    assert_eq!(
        services(&c, "app"),
        [
            ("app_agent".to_string(), "3/3".to_string()),
            ("app_api".to_string(), "2/2".to_string()),
            ("app_web".to_string(), "3/3".to_string())
        ]
    );
    let ps = c.shoal(0, &["stack", "ps", "app"]).ok();
    assert_eq!(
        ps.lines()
            .skip(1)
            .filter(|l| l.contains(" Running "))
            .count(),
        8,
        "{ps}"
    );
    // A worker's view of the stack: refused, pointing at a manager.
    let err = c.shoal(2, &["stack", "ls"]).err();
    assert!(err.contains("manager"), "{err}");

    // Unchanged: nothing is redeployed.
    let version = inspect(&c, "app_web")["version"].clone();
    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]).ok();
    assert!(out.contains("Service app_web is up to date"), "{out}");
    assert_eq!(inspect(&c, "app_web")["version"], version);

    // A malformed edit: an error with the file, line and column, and nothing changes.
    write(
        &app,
        "docker-compose.yml",
        &COMPOSE.replace(
            "    deploy:\n      mode: global",
            "    deploy:\n     mode: [global",
        ),
    );
    let err = c.shoal(0, &["stack", "deploy", "-c", file, "app"]).err();
    assert!(err.contains("docker-compose.yml:"), "{err}");
    assert_eq!(inspect(&c, "app_web")["version"], version);
    assert_eq!(c.processes(), 8);

    // Edited (a variable in .env): web goes through its rolling update, the rest is untouched.
    write(&app, "docker-compose.yml", COMPOSE);
    write(&app, ".env", "WEB_SLEEP=100010\nWEB_REPLICAS=3\n");
    let api_version = inspect(&c, "app_api")["version"].clone();
    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("Updating service app_web"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Service app_api is up to date"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("verify: Service app_web converged"),
        "{}",
        out.stdout
    );
    let web = inspect(&c, "app_web");
    assert_eq!(web["update_status"]["state"], "completed", "{web}");
    assert_eq!(inspect(&c, "app_api")["version"], api_version);
    c.wait("the old web processes gone", || {
        let lines = c.command_lines();
        (lines
            .iter()
            .filter(|l| l.as_str() == "sleep 100010")
            .count()
            == 3
            && !lines.iter().any(|l| l.as_str() == "sleep 100000"))
        .then_some(())
    });

    // A service dropped from the file stays without --prune, goes with it.
    let without_agent = COMPOSE.split("  agent:").next().unwrap().to_string();
    write(&app, "docker-compose.yml", &without_agent);
    c.shoal(0, &["stack", "deploy", "-c", file, "app"]).ok();
    assert_eq!(services(&c, "app").len(), 3);
    let out = c
        .shoal(0, &["stack", "deploy", "--prune", "-c", file, "app"])
        .ok();
    assert!(out.contains("Removing service app_agent"), "{out}");
    let names: Vec<String> = services(&c, "app").into_iter().map(|s| s.0).collect();
    assert_eq!(names, ["app_api", "app_web"]);

    // rm returns only once every task process has stopped.
    let out = c.shoal(0, &["stack", "rm", "app"]).ok();
    assert!(out.contains("Removing service app_api"), "{out}");
    assert!(out.contains("Removing service app_web"), "{out}");
    assert_eq!(c.processes(), 0, "{:?}", c.command_lines());
    assert_eq!(
        c.shoal(0, &["stack", "ls"]).ok().lines().count(),
        1,
        "only the header"
    );
    let err = c.shoal(0, &["stack", "rm", "app"]);
    assert_eq!(err.code, 0);
    assert!(
        err.stderr.contains("Nothing found in stack: app"),
        "{}",
        err.stderr
    );

    // So an immediate redeploy works.
    write(&app, "docker-compose.yml", COMPOSE);
    let out = c.shoal(0, &["stack", "deploy", "-c", file, "app"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert_eq!(c.processes(), 8, "{:?}", c.command_lines());
    c.shoal(0, &["stack", "rm", "app"]).ok();
    assert_eq!(c.processes(), 0);
}

/// A file written like the Docker documentation's stack examples: containers of a locally
/// built image, every `deploy:` key, a health check, a host-mode port.
const DOCS_STYLE: &str = r#"version: "3.9"
services:
  web:
    image: ${IMAGE}
    command: ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8000 -h /www"]
    ports:
      - target: 8000
        published: ${WEB_PORT}
        protocol: tcp
        mode: host
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/"]
      interval: 1s
      timeout: 3s
      retries: 3
      start_period: 1s
    stop_grace_period: 2s
    labels:
      com.example.description: "front end"
    deploy:
      mode: replicated
      replicas: 1
      endpoint_mode: vip
      labels:
        com.example.tier: front
      placement:
        constraints: [node.role == manager]
        preferences:
          - spread: node.labels.zone
        max_replicas_per_node: 1
      resources:
        limits:
          cpus: "0.50"
          memory: 64M
          pids: 100
        reservations:
          cpus: "0.10"
          memory: 16M
      restart_policy:
        condition: on-failure
        delay: 1s
        max_attempts: 3
        window: 30s
      update_config:
        parallelism: 1
        delay: 1s
        failure_action: rollback
        monitor: 2s
        max_failure_ratio: 0.3
        order: stop-first
      rollback_config:
        parallelism: 1
        delay: 0s
        failure_action: pause
        monitor: 2s
        order: stop-first
  worker:
    image: ${IMAGE}
    command: sleep 100000
    deploy:
      mode: global
      placement:
        constraints:
          - node.role == worker
"#;

/// The local Docker Engine, with the test image built (`None`: the container tests are skipped,
/// unless `SHOAL_REQUIRE_DOCKER=1`, which fails them).
struct Engine {
    rt: tokio::runtime::Runtime,
    docker: bollard::Docker,
}

impl Engine {
    fn get() -> Option<Engine> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(shoal_executor::test_image::engine_for_tests(
            "shoal-stack-tests",
        ))?;
        let docker = rt.block_on(async {
            bollard::Docker::connect_with_local_defaults()
                .unwrap()
                .negotiate_version()
                .await
                .unwrap()
        });
        Some(Engine { rt, docker })
    }

    /// Containers (id, running) of a shoal service.
    fn containers(&self, service: &str) -> Vec<(String, bool)> {
        let filters = std::collections::HashMap::from([(
            "label",
            vec![format!("com.shoal.service={service}")],
        )]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        self.rt
            .block_on(self.docker.list_containers(Some(options)))
            .unwrap_or_default()
            .into_iter()
            .map(|c| {
                (
                    c.id.unwrap_or_default(),
                    c.state.map(|s| s.to_string()).as_deref() == Some("running"),
                )
            })
            .collect()
    }

    /// Running containers of a shoal service.
    fn running(&self, service: &str) -> Vec<String> {
        self.containers(service)
            .into_iter()
            .filter(|c| c.1)
            .map(|c| c.0)
            .collect()
    }

    /// The engine's HostConfig of a container.
    fn host_config(&self, id: &str) -> bollard::models::HostConfig {
        self.rt
            .block_on(self.docker.inspect_container(id, None))
            .unwrap()
            .host_config
            .unwrap()
    }

    /// Removes whatever is left of these services' containers.
    fn clean(&self, services: &[&str]) {
        for s in services {
            for (id, _) in self.containers(s) {
                let options = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build();
                let _ = self
                    .rt
                    .block_on(self.docker.remove_container(&id, Some(options)));
            }
        }
    }
}

#[test]
fn a_stack_of_containers_from_a_docs_style_file() {
    let Some(engine) = Engine::get() else {
        return;
    };
    let containers = |service: &str| engine.containers(service);

    let _g = serial();
    let c = Cluster::start(3);
    c.form(1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = c.tmp.path().join("docs");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        ".env",
        &format!(
            "IMAGE={}\nWEB_PORT={port}\n",
            shoal_executor::test_image::DEFAULT_TAG
        ),
    );
    write(&dir, "docker-stack.yml", DOCS_STYLE);
    let file = dir.join("docker-stack.yml");
    let file = file.to_str().unwrap();

    let out = c.shoal(0, &["stack", "deploy", "-c", file, "docs"]);
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("verify: Service docs_web converged")
            && out.stdout.contains("verify: Service docs_worker converged"),
        "{}",
        out.stdout
    );
    // What is not applied is said, not dropped silently.
    assert!(out.stderr.contains("labels"), "{}", out.stderr);

    // The web container answers on its host port, healthy, with its limits.
    let (status, body) = common::http_get(&format!("127.0.0.1:{port}"), "/");
    assert_eq!((status, body.trim()), (200, "ok"));
    let web = engine.running("docs_web");
    assert_eq!(web.len(), 1);
    let host = engine.host_config(&web[0]);
    assert_eq!(host.memory, Some(64 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(100));
    let v: Value =
        serde_json::from_str(&c.shoal(0, &["service", "inspect", "docs_web"]).ok()).unwrap();
    assert_eq!(v[0]["spec"]["labels"]["com.example.tier"], "front", "{v}");
    // Global on the two workers only.
    assert_eq!(containers("docs_worker").iter().filter(|c| c.1).count(), 2);
    let ps = c.shoal(0, &["stack", "ps", "docs"]).ok();
    assert_eq!(
        ps.lines()
            .skip(1)
            .filter(|l| l.contains(" Running "))
            .count(),
        3,
        "{ps}"
    );

    // rm: once it returns, no container of the stack runs.
    c.shoal(0, &["stack", "rm", "docs"]).ok();
    let left: Vec<_> = containers("docs_web")
        .into_iter()
        .chain(containers("docs_worker"))
        .filter(|c| c.1)
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // Whatever the engine still holds of this cluster goes with the test.
    engine.clean(&["docs_web", "docs_worker"]);
}

/// The seed's example (`../shared/seed/`), as it is but for its port: `"4000:80"` would take
/// port 4000 on the routing mesh of the test machine, so the port is published in host mode on
/// a port the engine picks (the mesh has its own tests). The image and its
/// command come from a second file, as operators adapt a stack to a site.
const SEED: &str = r#"version: "3"
services:
  web:
    image: username/repo
    deploy:
      replicas: 5
      resources:
        limits:
          cpus: "0.1"
          memory: 50M
      restart_policy:
        condition: on-failure
    ports:
      - target: 80
        mode: host
    networks:
      - webnet
networks:
  webnet:
"#;

#[test]
fn the_seed_example_deploys_with_a_site_override() {
    let Some(engine) = Engine::get() else {
        return;
    };
    let _g = serial();
    let c = Cluster::start(3);
    c.form(1);
    let dir = c.tmp.path().join("seed");
    std::fs::create_dir(&dir).unwrap();
    write(&dir, "docker-compose.yml", SEED);
    write(
        &dir,
        "site.yml",
        &format!(
            "services:\n  web:\n    image: {}\n    command: [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/\"]\n",
            shoal_executor::test_image::DEFAULT_TAG
        ),
    );
    let base = dir.join("docker-compose.yml");
    let site = dir.join("site.yml");
    let out = c.shoal(
        0,
        &[
            "stack",
            "deploy",
            "-c",
            base.to_str().unwrap(),
            "-c",
            site.to_str().unwrap(),
            "getstartedlab",
        ],
    );
    assert_eq!(out.code, 0, "{} {}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("verify: Service getstartedlab_web converged"),
        "{}",
        out.stdout
    );
    // Networks are not dropped silently.
    assert!(out.stderr.contains("networks"), "{}", out.stderr);
    let web = engine.running("getstartedlab_web");
    assert_eq!(web.len(), 5);
    for id in &web {
        let host = engine.host_config(id);
        assert_eq!(host.memory, Some(50 << 20));
        assert_eq!(host.nano_cpus, Some(100_000_000));
    }
    let services = c.shoal(0, &["stack", "services", "getstartedlab"]).ok();
    assert!(services.contains("5/5"), "{services}");
    c.shoal(0, &["stack", "rm", "getstartedlab"]).ok();
    assert!(engine.running("getstartedlab_web").is_empty());
    engine.clean(&["getstartedlab_web"]);
}
