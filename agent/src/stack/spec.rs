//! One Compose service as a shoal service spec: the keys a cluster honours, the whole `deploy:`
//! section, `x-shoal-runtime: process`; unsupported keys warned about, unknown keys refused
//! (except `x-` extensions), every value checked with the service and key named.

use serde_json::{Map, Value};
use shoal_cluster::{
    FailureAction, HealthTest, MountSpec, MountType, Runtime, SecretKind, ServiceMode, ServiceSpec,
    UpdateConfig, UpdateOrder,
};

use super::fields::{key_values, ports, unsupported_warning, UNSUPPORTED};
use super::objects::{service_refs, StackObject};
use crate::cli::service::{
    parse_condition, parse_cpus, parse_duration, parse_memory, parse_mount, split_args,
};

/// The label naming a service's stack (Docker's).
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// Service keys read here.
const KNOWN: [&str; 18] = [
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "working_dir",
    "user",
    "labels",
    "ports",
    "healthcheck",
    "stop_grace_period",
    "volumes",
    "read_only",
    "deploy",
    "secrets",
    "configs",
    "hostname",
    "networks",
];

/// Keys a service spec has that the cluster does not use (yet): warned about, not refused.
const NOT_YET: [&str; 3] = ["hostname", "networks", "labels"];

fn text(v: &Value, what: &str) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(format!("{what}: expected a string")),
    }
}

/// A command as a list (a string is split as a shell would, quotes kept together).
fn words(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => split_args(s).map_err(|e| format!("{what}: {e}")),
        Value::Array(items) => items.iter().map(|i| text(i, what)).collect(),
        Value::Null => Ok(Vec::new()),
        _ => Err(format!("{what}: expected a string or a list")),
    }
}

fn millis(v: &Value, what: &str) -> Result<u64, String> {
    let s = text(v, what)?;
    parse_duration(&s)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .map_err(|e| format!("{what}: {e}"))
}

/// A whole number; a string of digits too, since an interpolated value (`replicas: ${N}`) is a
/// string until the key's type is known, as in Compose.
fn count(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        _ => v.as_u64(),
    }
    .ok_or_else(|| format!("{what}: expected a whole number, not {v}"))
}

/// A number (or a string holding one, as [`count`]).
fn number(v: &Value, what: &str) -> Result<f64, String> {
    match v {
        Value::String(s) => s.trim().parse().ok().filter(|x: &f64| x.is_finite()),
        _ => v.as_f64(),
    }
    .ok_or_else(|| format!("{what}: expected a number, not {v}"))
}

/// A boolean: `true`/`false`, or after interpolation the strings Compose takes for them
/// (`true`, `yes`, `y`, `on`, `1` and their opposites, any case).
pub(super) fn flag(v: &Value, what: &str) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" | "1" => Some(true),
            "false" | "no" | "n" | "off" | "0" => Some(false),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| format!("{what}: expected true or false, not {v}"))
}

/// Refuses keys of `map` outside `known` (except `x-` extensions).
fn only(map: &Map<String, Value>, known: &[&str], what: &str) -> Result<(), String> {
    match map
        .keys()
        .find(|k| !known.contains(&k.as_str()) && !k.starts_with("x-"))
    {
        Some(k) => Err(format!("{what}: unknown key {k:?}")),
        None => Ok(()),
    }
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("{what}: expected a mapping"))
}

/// `update_config:` or `rollback_config:`.
fn rollout(v: &Value, what: &str, rollback: bool) -> Result<UpdateConfig, String> {
    let m = object(v, what)?;
    only(
        m,
        &[
            "parallelism",
            "delay",
            "failure_action",
            "monitor",
            "max_failure_ratio",
            "order",
        ],
        what,
    )?;
    let mut c = UpdateConfig::default();
    if let Some(p) = m.get("parallelism") {
        c.parallelism = count(p, &format!("{what}.parallelism"))?;
    }
    if let Some(d) = m.get("delay") {
        c.delay_ms = millis(d, &format!("{what}.delay"))?;
    }
    if let Some(d) = m.get("monitor") {
        c.monitor_ms = millis(d, &format!("{what}.monitor"))?;
    }
    if let Some(a) = m.get("failure_action") {
        c.failure_action = match a.as_str().and_then(FailureAction::from_name) {
            Some(FailureAction::Rollback) if rollback => {
                return Err(format!(
                    "{what}.failure_action: a rollback can pause or continue"
                ))
            }
            Some(action) => action,
            None => return Err(format!("{what}.failure_action: invalid value {a}")),
        };
    }
    if let Some(r) = m.get("max_failure_ratio") {
        let r = number(r, &format!("{what}.max_failure_ratio"))
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("{what}.max_failure_ratio: expected a number from 0 to 1"))?;
        c.max_failure_ppm = (r * 1_000_000.0).round() as u32;
    }
    if let Some(o) = m.get("order") {
        c.order = o
            .as_str()
            .and_then(UpdateOrder::from_name)
            .ok_or_else(|| format!("{what}.order: invalid value {o}"))?;
    }
    Ok(c)
}

/// One volume: short syntax `SOURCE:TARGET[:ro]` (a source starting with `/` or `.` is a bind,
/// else a named volume; a bare target is an anonymous volume) or long syntax.
fn volume(v: &Value, what: &str, base: &std::path::Path) -> Result<MountSpec, String> {
    // A relative bind source is relative to the Compose file's directory, as in Compose.
    let resolve = |src: &str| -> String {
        if src.starts_with('.') {
            let rel = src.strip_prefix("./").unwrap_or(src);
            base.join(rel).display().to_string()
        } else {
            src.to_string()
        }
    };
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').collect();
            let (source, target, ro) = match parts.as_slice() {
                [t] => ("", *t, false),
                [src, t] => (*src, *t, false),
                [src, t, "ro"] => (*src, *t, true),
                [src, t, "rw"] => (*src, *t, false),
                _ => return Err(format!("{what}: invalid volume {s:?}")),
            };
            let kind = if source.starts_with('/') || source.starts_with('.') {
                MountType::Bind
            } else {
                MountType::Volume
            };
            Ok(MountSpec {
                kind,
                source: if kind == MountType::Bind {
                    resolve(source)
                } else {
                    source.to_string()
                },
                target: target.to_string(),
                read_only: ro,
            })
        }
        Value::Object(m) => {
            only(
                m,
                &["type", "source", "target", "read_only", "volume", "bind"],
                what,
            )?;
            let typ = m.get("type").and_then(Value::as_str).unwrap_or("volume");
            let mut spec = format!("type={typ}");
            for k in ["source", "target"] {
                if let Some(x) = m.get(k) {
                    let mut val = text(x, &format!("{what}.{k}"))?;
                    if k == "source" && typ == "bind" {
                        val = resolve(&val);
                    }
                    spec.push_str(&format!(",{k}={val}"));
                }
            }
            if let Some(r) = m.get("read_only") {
                if flag(r, &format!("{what}.read_only"))? {
                    spec.push_str(",readonly");
                }
            }
            parse_mount(&spec).map_err(|e| format!("{what}: {e}"))
        }
        _ => Err(format!("{what}: expected a string or a mapping")),
    }
}

/// What every service of a stack is built with.
pub struct StackContext<'a> {
    /// The stack's name (services are `STACK_NAME`, labelled with it).
    pub stack: &'a str,
    /// The first Compose file's directory: relative bind sources are taken from it.
    pub base: &'a std::path::Path,
    /// Environment values for bare `environment` keys.
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
    /// The stack's secrets and configs, which services name by key.
    pub objects: &'a [StackObject],
}

/// The shoal spec of Compose service `name` of the stack (named `STACK_NAME`, labelled with
/// the stack). `env_file` entries, read by the caller, come first and `environment` overrides
/// them.
pub fn service_spec(
    cx: &StackContext<'_>,
    name: &str,
    v: &Value,
    env_file: &[(String, String)],
    warnings: &mut Vec<String>,
) -> Result<ServiceSpec, String> {
    let (stack, base, lookup, objects) = (cx.stack, cx.base, cx.lookup, cx.objects);
    let what = format!("service {name}");
    let m = object(v, &what)?;
    let mut known: Vec<&str> = KNOWN.to_vec();
    known.extend(UNSUPPORTED);
    only(m, &known, &what)?;
    if let Some(w) = unsupported_warning(name, m) {
        warnings.push(w);
    }
    let later: Vec<&str> = NOT_YET
        .iter()
        .copied()
        .filter(|k| m.contains_key(*k))
        .collect();
    if !later.is_empty() {
        warnings.push(format!(
            "Ignoring options shoal does not apply yet for service {name}: {}",
            later.join(", ")
        ));
    }
    let process = m.get("x-shoal-runtime").and_then(Value::as_str) == Some("process");
    let command = words(
        m.get("command").unwrap_or(&Value::Null),
        &format!("{what}.command"),
    )?;
    let mut spec = ServiceSpec::new(&format!("{stack}_{name}"), "", 1);
    spec.labels.insert(STACK_LABEL.into(), stack.into());
    if process {
        spec.task.runtime = Runtime::Process;
        let (program, args) = command
            .split_first()
            .ok_or_else(|| format!("{what}: x-shoal-runtime process needs a command"))?;
        spec.task.image = program.clone();
        spec.task.args = args.to_vec();
    } else {
        spec.task.runtime = Runtime::Container;
        spec.task.image = text(
            m.get("image")
                .ok_or_else(|| format!("{what}: no image (shoal does not build images)"))?,
            &format!("{what}.image"),
        )?;
        spec.task.args = command;
        if let Some(e) = m.get("entrypoint") {
            spec.task.entrypoint = words(e, &format!("{what}.entrypoint"))?;
        }
    }
    let mut env: Vec<(String, String)> = env_file.to_vec();
    if let Some(e) = m.get("environment") {
        for (k, val) in key_values(e, &format!("{what}.environment"), lookup)? {
            env.retain(|(x, _)| *x != k);
            env.push((k, val));
        }
    }
    spec.task.env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if let Some(w) = m.get("working_dir") {
        spec.task.workdir = text(w, &format!("{what}.working_dir"))?;
    }
    if let Some(u) = m.get("user") {
        spec.task.user = text(u, &format!("{what}.user"))?;
    }
    if let Some(r) = m.get("read_only") {
        spec.task.read_only = flag(r, &format!("{what}.read_only"))?;
    }
    if let Some(p) = m.get("ports") {
        spec.task.ports = ports(p, name)?;
    }
    if let Some(g) = m.get("stop_grace_period") {
        spec.task.stop_grace_ms = millis(g, &format!("{what}.stop_grace_period"))?;
    }
    if let Some(Value::Array(vols)) = m.get("volumes") {
        for (i, v) in vols.iter().enumerate() {
            spec.task
                .mounts
                .push(volume(v, &format!("{what}.volumes[{i}]"), base)?);
        }
    }
    if let Some(h) = m.get("healthcheck") {
        let hw = format!("{what}.healthcheck");
        let hm = object(h, &hw)?;
        only(
            hm,
            &[
                "test",
                "interval",
                "timeout",
                "retries",
                "start_period",
                "start_interval",
                "disable",
            ],
            &hw,
        )?;
        let health = &mut spec.task.health;
        let disabled = match hm.get("disable") {
            Some(d) => flag(d, &format!("{hw}.disable"))?,
            None => false,
        };
        if disabled {
            health.test = HealthTest::Disabled;
        } else if let Some(t) = hm.get("test") {
            health.test = match t {
                Value::String(s) => HealthTest::Cmd(s.clone()),
                Value::Array(items) => {
                    let items: Vec<String> = items
                        .iter()
                        .map(|i| text(i, &format!("{hw}.test")))
                        .collect::<Result<_, _>>()?;
                    match items.split_first() {
                        Some((k, rest)) if k == "CMD-SHELL" => HealthTest::Cmd(rest.join(" ")),
                        Some((k, rest)) if k == "CMD" => HealthTest::Cmd(rest.join(" ")),
                        Some((k, _)) if k == "NONE" => HealthTest::Disabled,
                        _ => {
                            return Err(format!(
                                "{hw}.test: expected a string or a list starting with CMD, \
                                 CMD-SHELL or NONE"
                            ))
                        }
                    }
                }
                _ => return Err(format!("{hw}.test: expected a string or a list")),
            };
        }
        if let Some(x) = hm.get("interval") {
            health.interval_ms = millis(x, &format!("{hw}.interval"))?;
        }
        if let Some(x) = hm.get("timeout") {
            health.timeout_ms = millis(x, &format!("{hw}.timeout"))?;
        }
        if let Some(x) = hm.get("start_period") {
            health.start_period_ms = millis(x, &format!("{hw}.start_period"))?;
        }
        if let Some(x) = hm.get("retries") {
            health.retries = u32::try_from(count(x, &format!("{hw}.retries"))?)
                .map_err(|_| format!("{hw}.retries: too large"))?;
        }
    }
    for (kind, key) in [
        (SecretKind::Secret, "secrets"),
        (SecretKind::Config, "configs"),
    ] {
        if let Some(list) = m.get(key) {
            spec.task
                .secrets
                .extend(service_refs(kind, list, &format!("{what}.{key}"), objects)?);
        }
    }
    if let Some(d) = m.get("deploy") {
        deploy(&mut spec, d, &format!("{what}.deploy"), warnings)?;
    }
    spec.validate().map_err(|e| format!("{what}: {e}"))?;
    Ok(spec)
}

/// The `deploy:` section.
fn deploy(
    spec: &mut ServiceSpec,
    v: &Value,
    what: &str,
    warnings: &mut Vec<String>,
) -> Result<(), String> {
    let m = object(v, what)?;
    only(
        m,
        &[
            "mode",
            "replicas",
            "endpoint_mode",
            "labels",
            "placement",
            "resources",
            "restart_policy",
            "update_config",
            "rollback_config",
        ],
        what,
    )?;
    let replicas = match m.get("replicas") {
        Some(r) => Some(count(r, &format!("{what}.replicas"))?),
        None => None,
    };
    spec.mode = match (m.get("mode").and_then(Value::as_str), replicas) {
        (Some("global"), Some(_)) => {
            return Err(format!(
                "{what}: replicas cannot be set for a global service"
            ))
        }
        (Some("global"), None) => ServiceMode::Global,
        (None | Some("replicated"), r) => ServiceMode::Replicated {
            replicas: r.unwrap_or(1),
        },
        (Some(other), _) => return Err(format!("{what}.mode: invalid value {other:?}")),
    };
    if let Some(e) = m.get("endpoint_mode") {
        match e.as_str() {
            Some("vip") => {}
            Some("dnsrr") => warnings.push(format!(
                "{what}.endpoint_mode dnsrr: shoal has no service DNS yet; ignored"
            )),
            _ => return Err(format!("{what}.endpoint_mode: invalid value {e}")),
        }
    }
    if let Some(l) = m.get("labels") {
        for (k, val) in key_values(l, &format!("{what}.labels"), &|_| None)? {
            spec.labels.insert(k, val);
        }
    }
    if let Some(p) = m.get("placement") {
        let pw = format!("{what}.placement");
        let pm = object(p, &pw)?;
        only(
            pm,
            &["constraints", "preferences", "max_replicas_per_node"],
            &pw,
        )?;
        if let Some(c) = pm.get("constraints") {
            spec.task.placement.constraints = words_list(c, &format!("{pw}.constraints"))?;
        }
        if let Some(Value::Array(prefs)) = pm.get("preferences") {
            for p in prefs {
                let spread = p
                    .get("spread")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{pw}.preferences: expected - spread: LABEL"))?;
                spec.task
                    .placement
                    .preferences
                    .push(format!("spread={spread}"));
            }
        }
        if let Some(x) = pm.get("max_replicas_per_node") {
            spec.task.placement.max_replicas_per_node =
                count(x, &format!("{pw}.max_replicas_per_node"))?;
        }
    }
    if let Some(r) = m.get("resources") {
        let rw = format!("{what}.resources");
        let rm = object(r, &rw)?;
        only(rm, &["limits", "reservations"], &rw)?;
        for (key, res) in [
            ("limits", &mut spec.task.resources.limits),
            ("reservations", &mut spec.task.resources.reservations),
        ] {
            let Some(x) = rm.get(key) else { continue };
            let xw = format!("{rw}.{key}");
            let xm = object(x, &xw)?;
            only(
                xm,
                &["cpus", "memory", "pids", "devices", "generic_resources"],
                &xw,
            )?;
            if let Some(c) = xm.get("cpus") {
                res.nano_cpus = parse_cpus(&text(c, &format!("{xw}.cpus"))?)
                    .map_err(|e| format!("{xw}: {e}"))?;
            }
            if let Some(mem) = xm.get("memory") {
                res.memory_bytes = parse_memory(&text(mem, &format!("{xw}.memory"))?)
                    .map_err(|e| format!("{xw}: {e}"))?;
            }
            let mut ignored: Vec<&str> = Vec::new();
            if let Some(p) = xm.get("pids") {
                if key == "limits" {
                    spec.task.resources.pids_limit = count(p, &format!("{xw}.pids"))?;
                } else {
                    ignored.push("pids");
                }
            }
            ignored.extend(
                ["devices", "generic_resources"]
                    .into_iter()
                    .filter(|k| xm.contains_key(*k)),
            );
            if !ignored.is_empty() {
                warnings.push(format!("{xw}: ignoring {}", ignored.join(", ")));
            }
        }
    }
    if let Some(r) = m.get("restart_policy") {
        let rw = format!("{what}.restart_policy");
        let rm = object(r, &rw)?;
        only(rm, &["condition", "delay", "max_attempts", "window"], &rw)?;
        let p = &mut spec.task.restart;
        if let Some(c) = rm.get("condition") {
            p.condition = parse_condition(&text(c, &format!("{rw}.condition"))?)
                .map_err(|e| format!("{rw}: {e}"))?;
        }
        if let Some(d) = rm.get("delay") {
            p.delay_ms = millis(d, &format!("{rw}.delay"))?;
        }
        if let Some(a) = rm.get("max_attempts") {
            p.max_attempts = count(a, &format!("{rw}.max_attempts"))?;
        }
        if let Some(w) = rm.get("window") {
            p.window_ms = millis(w, &format!("{rw}.window"))?;
        }
    }
    if let Some(u) = m.get("update_config") {
        spec.update = rollout(u, &format!("{what}.update_config"), false)?;
    }
    if let Some(u) = m.get("rollback_config") {
        spec.rollback = rollout(u, &format!("{what}.rollback_config"), true)?;
    }
    Ok(())
}

/// A list of strings.
fn words_list(v: &Value, what: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items.iter().map(|i| text(i, what)).collect(),
        _ => Err(format!("{what}: expected a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn build(v: Value) -> Result<(ServiceSpec, Vec<String>), String> {
        let mut w = Vec::new();
        let lookup = |k: &str| (k == "FROM_ENV").then(|| "env".to_string());
        let base = std::path::Path::new("/srv/app");
        let cx = StackContext {
            stack: "app",
            base,
            lookup: &lookup,
            objects: &[],
        };
        service_spec(&cx, "web", &v, &[("F".into(), "file".into())], &mut w).map(|s| (s, w))
    }

    #[test]
    fn a_service_with_every_deploy_key() {
        let (s, warnings) = build(json!({
            "image": "nginx:1.27",
            "command": "nginx -g 'daemon off;'",
            "environment": {"A": "1", "F": "over", "FROM_ENV": null},
            "working_dir": "/srv",
            "user": "101",
            "ports": [{"target": 80, "published": 8080, "mode": "host"}],
            "volumes": ["data:/data", "./conf:/etc/nginx/conf.d:ro", {"type": "bind", "source": "/srv", "target": "/x", "read_only": true}],
            "stop_grace_period": "1m30s",
            "healthcheck": {"test": ["CMD", "wget", "-q", "-O-", "http://localhost/"], "interval": "10s", "timeout": "2s", "retries": 5, "start_period": "30s"},
            "depends_on": ["db"],
            "build": ".",
            "x-note": "kept out",
            "deploy": {
                "mode": "replicated",
                "replicas": 3,
                "endpoint_mode": "vip",
                "labels": ["tier=front"],
                "placement": {"constraints": ["node.role==worker"], "preferences": [{"spread": "node.labels.zone"}], "max_replicas_per_node": 2},
                "resources": {"limits": {"cpus": "0.5", "memory": "256M", "pids": 200}, "reservations": {"cpus": "0.25", "memory": "64M"}},
                "restart_policy": {"condition": "on-failure", "delay": "5s", "max_attempts": 3, "window": "2m"},
                "update_config": {"parallelism": 2, "delay": "10s", "failure_action": "rollback", "monitor": "30s", "max_failure_ratio": 0.3, "order": "start-first"},
                "rollback_config": {"parallelism": 0, "order": "stop-first"}
            }
        }))
        .unwrap();
        assert_eq!(s.name, "app_web");
        assert_eq!(s.labels["com.docker.stack.namespace"], "app");
        assert_eq!(s.labels["tier"], "front");
        assert_eq!(s.task.runtime, Runtime::Container);
        assert_eq!(s.task.image, "nginx:1.27");
        assert_eq!(s.task.args, vec!["nginx", "-g", "daemon off;"]);
        assert_eq!(s.task.env, vec!["A=1", "F=over", "FROM_ENV=env"]);
        assert_eq!(
            (s.task.workdir.as_str(), s.task.user.as_str()),
            ("/srv", "101")
        );
        assert_eq!(s.task.ports.len(), 1);
        assert_eq!(s.task.mounts.len(), 3);
        assert_eq!(s.task.mounts[0].kind, MountType::Volume);
        assert!(s.task.mounts[1].read_only && s.task.mounts[1].kind == MountType::Bind);
        assert_eq!(s.task.mounts[1].source, "/srv/app/conf");
        assert!(s.task.mounts[2].read_only);
        assert_eq!(s.task.stop_grace_ms, 90_000);
        assert_eq!(
            s.task.health.test,
            HealthTest::Cmd("wget -q -O- http://localhost/".into())
        );
        assert_eq!(
            (
                s.task.health.interval_ms,
                s.task.health.timeout_ms,
                s.task.health.retries
            ),
            (10_000, 2_000, 5)
        );
        assert_eq!(s.task.health.start_period_ms, 30_000);
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(s.task.placement.constraints, vec!["node.role==worker"]);
        assert_eq!(
            s.task.placement.preferences,
            vec!["spread=node.labels.zone"]
        );
        assert_eq!(s.task.placement.max_replicas_per_node, 2);
        assert_eq!(s.task.resources.limits.nano_cpus, 500_000_000);
        assert_eq!(s.task.resources.limits.memory_bytes, 256 << 20);
        assert_eq!(s.task.resources.reservations.memory_bytes, 64 << 20);
        assert_eq!(s.task.resources.pids_limit, 200);
        assert_eq!(s.task.restart.max_attempts, 3);
        assert_eq!(s.task.restart.window_ms, 120_000);
        assert_eq!(s.update.parallelism, 2);
        assert_eq!(s.update.failure_action, FailureAction::Rollback);
        assert_eq!(s.update.max_failure_ppm, 300_000);
        assert_eq!(s.update.order, UpdateOrder::StartFirst);
        assert_eq!(s.rollback.parallelism, 0);
        assert_eq!(
            warnings,
            vec!["Ignoring unsupported options for service web: build, depends_on"]
        );
    }

    #[test]
    fn process_services_global_mode_and_clear_errors() {
        let (s, _) = build(json!({
            "x-shoal-runtime": "process",
            "command": ["sleep", "1000"],
            "deploy": {"mode": "global"}
        }))
        .unwrap();
        assert_eq!(s.task.runtime, Runtime::Process);
        assert_eq!(
            (s.task.image.as_str(), s.task.args.clone()),
            ("sleep", vec!["1000".to_string()])
        );
        assert_eq!(s.mode, ServiceMode::Global);
        for (bad, want) in [
            (json!({"command": "x"}), "no image"),
            (
                json!({"image": "x", "imagee": "y"}),
                "unknown key \"imagee\"",
            ),
            (
                json!({"image": "x", "deploy": {"mode": "global", "replicas": 2}}),
                "replicas cannot be set",
            ),
            (
                json!({"image": "x", "deploy": {"replicas": -1}}),
                "deploy.replicas",
            ),
            (
                json!({"image": "x", "deploy": {"update_config": {"order": "sideways"}}}),
                "update_config.order",
            ),
            (
                json!({"image": "x", "deploy": {"rollback_config": {"failure_action": "rollback"}}}),
                "rollback_config.failure_action",
            ),
            (
                json!({"image": "x", "deploy": {"resources": {"limits": {"memory": "lots"}}}}),
                "resources.limits",
            ),
            (
                json!({"image": "x", "stop_grace_period": "soon"}),
                "stop_grace_period",
            ),
            (
                json!({"image": "x", "healthcheck": {"test": ["RUN", "x"]}}),
                "healthcheck.test",
            ),
            (json!({"x-shoal-runtime": "process"}), "needs a command"),
            (json!(["image"]), "expected a mapping"),
        ] {
            let e = build(bad.clone()).unwrap_err();
            assert!(e.starts_with("service web"), "{bad}: {e}");
            assert!(e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn interpolated_numbers_and_booleans_are_read_by_the_key_type() {
        // After `${VAR}` interpolation every value is a string, as in Compose.
        let (s, _) = build(json!({
            "image": "nginx",
            "read_only": "yes",
            "healthcheck": {"test": "true", "disable": "false"},
            "volumes": [{"type": "bind", "source": "/srv", "target": "/x", "read_only": "true"}],
            "deploy": {
                "replicas": "4",
                "placement": {"max_replicas_per_node": "2"},
                "restart_policy": {"max_attempts": " 3 "},
                "update_config": {"parallelism": "2", "max_failure_ratio": "0.25"}
            }
        }))
        .unwrap();
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 4 });
        assert!(s.task.read_only);
        assert!(s.task.mounts[0].read_only);
        assert_eq!(s.task.placement.max_replicas_per_node, 2);
        assert_eq!(s.task.restart.max_attempts, 3);
        assert_eq!(s.update.parallelism, 2);
        assert_eq!(s.update.max_failure_ppm, 250_000);
        assert_eq!(s.task.health.test, HealthTest::Cmd("true".into()));
        for (bad, want) in [
            (
                json!({"image": "x", "deploy": {"replicas": "three"}}),
                "replicas",
            ),
            (
                json!({"image": "x", "deploy": {"replicas": "-1"}}),
                "replicas",
            ),
            (json!({"image": "x", "read_only": "maybe"}), "read_only"),
            (
                json!({"image": "x", "deploy": {"update_config": {"max_failure_ratio": "NaN"}}}),
                "max_failure_ratio",
            ),
        ] {
            let e = build(bad.clone()).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}
