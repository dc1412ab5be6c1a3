//! A whole stack from its Compose files: the files read (with a size cap), the `.env` file next
//! to the first one, interpolation and merge, the top-level keys checked, each service's
//! `env_file` read, and every service turned into a shoal spec before anything is deployed.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;
use shoal_cluster::ServiceSpec;

use super::interpolate::{parse_dotenv, Vars};
use super::load::{load, MAX_FILE_BYTES};
use super::objects::{objects, StackObject};
use super::spec::{service_spec, StackContext};

/// Top-level keys of a Compose file.
const TOP_LEVEL: [&str; 7] = [
    "services", "version", "name", "networks", "volumes", "secrets", "configs",
];

/// Top-level keys shoal has nothing to do with yet (volumes are created by the engine on first
/// use; networks come with the routing mesh): warned about when not empty.
const TOP_LEVEL_LATER: [&str; 1] = ["networks"];

/// What a stack's files say: its services as shoal specs (sorted by name), the merged and
/// interpolated file, and warnings for the operator.
#[derive(Debug)]
pub struct Stack {
    /// One spec per Compose service, named `STACK_SERVICE`.
    pub services: Vec<ServiceSpec>,
    /// The secrets and configs it defines or uses (external ones).
    pub objects: Vec<StackObject>,
    /// The merged, interpolated Compose file (`stack config` prints it).
    pub merged: Value,
    /// Lines for the operator (unsupported keys, unset variables).
    pub warnings: Vec<String>,
}

/// Reads a file of at most [`MAX_FILE_BYTES`], with its name in errors.
pub fn read_capped(path: &Path) -> Result<String, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{shown}: {e}"))?;
    if text.len() > MAX_FILE_BYTES {
        return Err(format!(
            "{shown}: larger than the {} KiB a Compose file may have",
            MAX_FILE_BYTES / 1024
        ));
    }
    Ok(text)
}

/// The directory relative paths of a Compose file are taken from.
fn base_dir(first: &Path) -> PathBuf {
    match first.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Loads the stack `name` from `files` (merged in order) with variables from `env` and from
/// the `.env` file next to the first file, if there is one.
pub fn load_stack(
    name: &str,
    files: &[PathBuf],
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Stack, String> {
    let first = files
        .first()
        .ok_or("no Compose file given: use -c docker-compose.yml")?;
    let base = base_dir(first);
    let dotenv_path = base.join(".env");
    let dotenv = if dotenv_path.is_file() {
        parse_dotenv(
            &read_capped(&dotenv_path)?,
            &dotenv_path.display().to_string(),
        )?
    } else {
        Vec::new()
    };
    let vars = Vars::new(env, dotenv);
    let mut texts = Vec::new();
    for f in files {
        texts.push((f.display().to_string(), read_capped(f)?));
    }
    let mut warnings = Vec::new();
    let mut merged = load(&texts, &vars, &mut warnings)?;
    retype(&mut merged);
    let (services, objects) = specs(name, &merged, &base, &vars, &mut warnings)?;
    Ok(Stack {
        services,
        objects,
        merged,
        warnings,
    })
}

/// Whole-number and boolean keys of a service, by path: after interpolation their values are
/// strings (`replicas: ${N}`), which Compose then reads by the key's type.
const NUMBER_PATHS: [&[&str]; 9] = [
    &["deploy", "replicas"],
    &["deploy", "placement", "max_replicas_per_node"],
    &["deploy", "restart_policy", "max_attempts"],
    &["deploy", "update_config", "parallelism"],
    &["deploy", "update_config", "max_failure_ratio"],
    &["deploy", "rollback_config", "parallelism"],
    &["deploy", "rollback_config", "max_failure_ratio"],
    &["deploy", "resources", "limits", "pids"],
    &["healthcheck", "retries"],
];
const BOOL_PATHS: [&[&str]; 2] = [&["read_only"], &["healthcheck", "disable"]];

/// Gives interpolated numbers and booleans their type again (what does not parse is left for
/// the spec to refuse, naming the key), so that `stack config` prints `replicas: 3`.
fn retype(merged: &mut Value) {
    let Some(Value::Object(services)) = merged.get_mut("services") else {
        return;
    };
    for svc in services.values_mut() {
        for path in NUMBER_PATHS {
            if let Some(v) = at(svc, path) {
                let parsed = v.as_str().and_then(|s| {
                    let s = s.trim();
                    s.parse::<u64>().map(Value::from).ok().or_else(|| {
                        s.parse::<f64>()
                            .ok()
                            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
                    })
                });
                if let Some(n) = parsed {
                    *v = n;
                }
            }
        }
        for path in BOOL_PATHS {
            if let Some(v) = at(svc, path) {
                match v.as_str().map(str::trim) {
                    Some("true") => *v = Value::Bool(true),
                    Some("false") => *v = Value::Bool(false),
                    _ => {}
                }
            }
        }
        if let Some(Value::Array(ports)) = svc.get_mut("ports") {
            for p in ports.iter_mut().filter(|p| p.is_object()) {
                for k in ["target", "published"] {
                    if let Some(v) = p.get_mut(k) {
                        if let Some(n) = v.as_str().and_then(|s| s.trim().parse::<u64>().ok()) {
                            *v = Value::from(n);
                        }
                    }
                }
            }
        }
    }
}

/// The value at `path` under `v`, if every step is there.
fn at<'a>(v: &'a mut Value, path: &[&str]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| v.get_mut(*k))
}

/// Checks the merged file's top level and builds every service's spec and the secrets and
/// configs.
pub fn specs(
    name: &str,
    merged: &Value,
    base: &Path,
    vars: &Vars,
    warnings: &mut Vec<String>,
) -> Result<(Vec<ServiceSpec>, Vec<StackObject>), String> {
    let top = merged
        .as_object()
        .ok_or("a Compose file is a mapping (services:, volumes:, …)")?;
    if let Some(k) = top
        .keys()
        .find(|k| !TOP_LEVEL.contains(&k.as_str()) && !k.starts_with("x-"))
    {
        return Err(format!("unknown top-level key {k:?}"));
    }
    for k in TOP_LEVEL_LATER {
        if top
            .get(k)
            .is_some_and(|v| v.as_object().is_some_and(|m| !m.is_empty()))
        {
            warnings.push(format!(
                "Ignoring top-level {k}: shoal does not have {k} yet"
            ));
        }
    }
    let services = match top.get("services") {
        Some(Value::Object(m)) if !m.is_empty() => m,
        Some(Value::Object(_)) | Some(Value::Null) | None => {
            return Err("the Compose file defines no services".into())
        }
        Some(_) => return Err("services: expected a mapping of service names".into()),
    };
    let objects = objects(name, top, base, vars)?;
    let lookup = |k: &str| vars.get(k).map(str::to_string);
    let cx = StackContext {
        stack: name,
        base,
        lookup: &lookup,
        objects: &objects,
    };
    let mut out = Vec::new();
    for (svc, v) in services {
        let env_file = env_files(svc, v, base)?;
        out.push(service_spec(&cx, svc, v, &env_file, warnings)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, objects))
}

/// A service's `env_file:` entries in order (a string, or a list of paths or of
/// `{path, required}`), read relative to the Compose file's directory.
fn env_files(svc: &str, v: &Value, base: &Path) -> Result<Vec<(String, String)>, String> {
    let what = format!("service {svc}.env_file");
    let entries: Vec<Value> = match v.get("env_file") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items.clone(),
        Some(other) => vec![other.clone()],
    };
    let mut out: Vec<(String, String)> = Vec::new();
    for e in entries {
        let (path, required) = match &e {
            Value::String(s) => (s.clone(), true),
            Value::Object(m) => (
                m.get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{what}: an entry needs a path"))?
                    .to_string(),
                match m.get("required") {
                    Some(r) => super::spec::flag(r, &format!("{what}.required"))?,
                    None => true,
                },
            ),
            _ => return Err(format!("{what}: expected a path or a list of paths")),
        };
        let full = base.join(&path);
        if !full.is_file() {
            if required {
                return Err(format!("{what}: {} not found", full.display()));
            }
            continue;
        }
        for (k, val) in parse_dotenv(&read_capped(&full)?, &full.display().to_string())? {
            out.retain(|(x, _)| *x != k);
            out.push((k, val));
        }
    }
    Ok(out)
}

/// The merged file as YAML (keys in order). A `$` in a value is printed as `$$`, so that what
/// is printed is itself a Compose file that deploys the same stack.
pub fn config_yaml(merged: &Value) -> Result<String, String> {
    fn escape(v: &Value) -> Value {
        match v {
            Value::String(s) => Value::String(s.replace('$', "$$")),
            Value::Array(items) => Value::Array(items.iter().map(escape).collect()),
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), escape(v))).collect())
            }
            other => other.clone(),
        }
    }
    serde_saphyr::to_string(&escape(merged)).map_err(|e| format!("cannot print the file: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_cluster::{RestartCondition, Runtime, ServiceMode};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The seed's example as it is, and with its port published in host mode.
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
      - "4000:80"
    networks:
      - webnet
networks:
  webnet:
"#;

    #[test]
    fn the_seed_example_maps_with_its_ingress_port() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "docker-compose.yml", SEED);
        let stack = load_stack("getstarted", &[f], env(&[])).unwrap();
        assert_eq!(stack.services.len(), 1);
        let s = &stack.services[0];
        assert_eq!(s.name, "getstarted_web");
        assert_eq!(
            s.labels.get(crate::stack::spec::STACK_LABEL).unwrap(),
            "getstarted"
        );
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!(s.task.runtime, Runtime::Container);
        assert_eq!(s.task.image, "username/repo");
        assert_eq!(s.task.resources.limits.nano_cpus, 100_000_000);
        assert_eq!(s.task.resources.limits.memory_bytes, 50 * 1024 * 1024);
        assert_eq!(s.task.restart.condition, RestartCondition::OnFailure);
        assert_eq!(s.task.ports.len(), 1);
        assert_eq!(
            (
                s.task.ports[0].published,
                s.task.ports[0].target,
                s.task.ports[0].mode
            ),
            (4000, 80, shoal_cluster::PublishMode::Ingress)
        );
        // The service's networks key and the top-level networks are both named, not dropped
        // silently.
        assert!(
            stack
                .warnings
                .iter()
                .any(|w| w.contains("web") && w.contains("networks")),
            "{:?}",
            stack.warnings
        );
        assert!(
            stack
                .warnings
                .iter()
                .any(|w| w.contains("top-level networks")),
            "{:?}",
            stack.warnings
        );
    }

    #[test]
    fn dotenv_next_to_the_first_file_env_file_and_environment_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("deploy");
        std::fs::create_dir(&sub).unwrap();
        // .env is read next to the first file, not the current directory.
        write(
            &sub,
            ".env",
            "TAG=1.2\nREPLICAS=3\n# a comment\nGREETING=\"hello world\"\n",
        );
        write(&sub, "common.env", "A=from-file\nB=from-file\n");
        write(&sub, "extra.env", "B=from-extra\n");
        let f = write(
            &sub,
            "stack.yml",
            r#"
services:
  api:
    x-shoal-runtime: process
    command: ["sleep", "${TAG}"]
    env_file:
      - common.env
      - path: extra.env
      - path: missing.env
        required: false
    environment:
      A: from-environment
      GREETING: ${GREETING}
      SHELL_ONLY: ${SHELL_ONLY:-unset}
    deploy:
      replicas: ${REPLICAS}
"#,
        );
        // The shell's environment wins over .env, as in Compose.
        let stack = load_stack("app", &[f], env(&[("REPLICAS", "2")])).unwrap();
        let s = &stack.services[0];
        assert_eq!(s.name, "app_api");
        assert_eq!(s.task.runtime, Runtime::Process);
        assert_eq!(
            (s.task.image.as_str(), s.task.args.clone()),
            ("sleep", vec!["1.2".to_string()])
        );
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 2 });
        let mut got = s.task.env.clone();
        got.sort();
        assert_eq!(
            got,
            [
                "A=from-environment",
                "B=from-extra",
                "GREETING=hello world",
                "SHELL_ONLY=unset"
            ]
        );

        // A required env_file that is missing is an error naming it.
        let f2 = write(
            &sub,
            "bad.yml",
            "services:\n  api:\n    x-shoal-runtime: process\n    command: sleep 1\n    env_file: nope.env\n",
        );
        let err = load_stack("app", &[f2], env(&[])).unwrap_err();
        assert!(
            err.contains("env_file") && err.contains("nope.env"),
            "{err}"
        );
    }

    #[test]
    fn top_level_keys_are_checked_and_an_empty_file_deploys_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let svc = "services:\n  a:\n    x-shoal-runtime: process\n    command: sleep 1\n";
        let ok = write(
            dir.path(),
            "ok.yml",
            &format!("{svc}x-common: &c {{}}\nvolumes:\n  data: {{}}\nname: whatever\n"),
        );
        assert!(load_stack("s", &[ok], env(&[])).is_ok());
        let bad = write(dir.path(), "bad.yml", &format!("{svc}servces: {{}}\n"));
        let err = load_stack("s", &[bad], env(&[])).unwrap_err();
        assert!(err.contains("servces"), "{err}");
        let none = write(dir.path(), "none.yml", "version: \"3.8\"\nservices: {}\n");
        let err = load_stack("s", &[none], env(&[])).unwrap_err();
        assert!(err.contains("no services"), "{err}");
        let err = load_stack("s", &[], env(&[])).unwrap_err();
        assert!(err.contains("-c"), "{err}");
        let err = load_stack("s", &[dir.path().join("absent.yml")], env(&[])).unwrap_err();
        assert!(err.contains("absent.yml"), "{err}");
    }

    #[test]
    fn a_malformed_file_names_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "broken.yml",
            "services:\n  web:\n    image: nginx\n   ports: [\n",
        );
        let err = load_stack("s", &[f], env(&[])).unwrap_err();
        assert!(err.contains("broken.yml:"), "{err}");
        // FILE:LINE:COLUMN
        let after = err.split("broken.yml:").nth(1).unwrap();
        let mut parts = after.split(':');
        assert!(parts.next().unwrap().trim().parse::<u32>().is_ok(), "{err}");
        assert!(parts.next().unwrap().trim().parse::<u32>().is_ok(), "{err}");
    }

    #[test]
    fn an_oversized_file_is_refused_before_parsing() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "big.yml", &"#".repeat(MAX_FILE_BYTES + 1));
        let err = read_capped(&f).unwrap_err();
        assert!(err.contains("big.yml") && err.contains("KiB"), "{err}");
    }

    #[test]
    fn config_prints_the_merged_interpolated_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), ".env", "IMAGE=nginx:1.27\n");
        let a = write(
            dir.path(),
            "a.yml",
            "services:\n  web:\n    image: ${IMAGE}\n    read_only: ${RO:-true}\n    deploy:\n      replicas: 2\n",
        );
        let b = write(
            dir.path(),
            "b.yml",
            "services:\n  web:\n    deploy:\n      replicas: ${N:-4}\n    environment:\n      - COST=$$5\n      - COUNT=${N:-4}\n",
        );
        let stack = load_stack("s", &[a, b], env(&[])).unwrap();
        let yaml = config_yaml(&stack.merged).unwrap();
        assert!(yaml.contains("image: nginx:1.27"), "{yaml}");
        // Numbers and booleans are printed as such again, environment values stay strings.
        assert!(yaml.contains("replicas: 4\n"), "{yaml}");
        assert!(yaml.contains("read_only: true\n"), "{yaml}");
        assert!(yaml.contains("COUNT=4"), "{yaml}");
        assert!(yaml.contains("COST=$$5"), "{yaml}");
        // What is printed is itself a Compose file giving the same stack.
        let again = write(dir.path(), "again.yml", &yaml);
        let reloaded = load_stack("s", &[again], env(&[])).unwrap();
        assert_eq!(reloaded.services, stack.services);
        assert!(reloaded.services[0]
            .task
            .env
            .contains(&"COST=$5".to_string()));
    }
}
