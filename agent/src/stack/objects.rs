//! A stack's secrets and configs: the top-level `secrets:` and `configs:` (from a `file:`, an
//! `environment:` variable, a config's inline `content:`, or `external:` ones that must exist
//! already), and the services' `secrets:`/`configs:` lists (short names or `source`, `target`,
//! `uid`, `gid`, `mode`), as Compose describes them.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};
use shoal_cluster::{SecretKind, SecretRef, MAX_SECRET_BYTES};

use super::interpolate::Vars;
use super::spec::STACK_LABEL;

/// A secret or config a stack defines.
#[derive(Clone, PartialEq, Eq)]
pub struct StackObject {
    /// Secret or config.
    pub kind: SecretKind,
    /// Its key in the file (what services name).
    pub key: String,
    /// The object's name in the swarm: `STACK_KEY` unless `name:` says otherwise; an external
    /// one's own name.
    pub name: String,
    /// The content to create it with; `None` for an external one.
    pub data: Option<Vec<u8>>,
    /// Its labels (the stack's label among them).
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for StackObject {
    /// Never the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackObject")
            .field("kind", &self.kind)
            .field("key", &self.key)
            .field("name", &self.name)
            .field("bytes", &self.data.as_ref().map(Vec::len))
            .finish()
    }
}

fn plural(kind: SecretKind) -> &'static str {
    match kind {
        SecretKind::Secret => "secrets",
        SecretKind::Config => "configs",
    }
}

/// Reads a file of at most 500 KiB (Swarm's limit), naming it in errors.
fn read_object_file(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{what}: {}: {e}", path.display()))?;
    let mut data = Vec::new();
    file.take(MAX_SECRET_BYTES as u64 + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{what}: {}: {e}", path.display()))?;
    if data.len() > MAX_SECRET_BYTES {
        return Err(format!("{what}: {} is larger than 500 KiB", path.display()));
    }
    Ok(data)
}

/// The top-level `secrets:` and `configs:` of a merged file.
pub fn objects(
    stack: &str,
    top: &Map<String, Value>,
    base: &Path,
    vars: &Vars,
) -> Result<Vec<StackObject>, String> {
    let mut out = Vec::new();
    for kind in [SecretKind::Secret, SecretKind::Config] {
        let section = plural(kind);
        let defs = match top.get(section) {
            None | Some(Value::Null) => continue,
            Some(Value::Object(m)) => m,
            Some(_) => return Err(format!("{section}: expected a mapping of names")),
        };
        for (key, def) in defs {
            let what = format!("{section}.{key}");
            let m = match def {
                Value::Object(m) => m,
                Value::Null => return Err(format!("{what}: give a file, or external: true")),
                _ => return Err(format!("{what}: expected a mapping")),
            };
            let mut known = vec!["file", "external", "name", "environment", "labels"];
            if kind == SecretKind::Config {
                known.push("content");
            }
            if let Some(k) = m
                .keys()
                .find(|k| !known.contains(&k.as_str()) && !k.starts_with("x-"))
            {
                return Err(format!("{what}: unknown key {k:?}"));
            }
            let given_name = m
                .get("name")
                .map(|n| {
                    n.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("{what}.name: expected a string"))
                })
                .transpose()?;
            // `external: true`, or the older `external: {name: …}`.
            let (external, external_name) = match m.get("external") {
                None | Some(Value::Null) => (false, None),
                Some(Value::Object(e)) => (
                    true,
                    e.get("name").and_then(Value::as_str).map(str::to_string),
                ),
                Some(v) => (super::spec::flag(v, &format!("{what}.external"))?, None),
            };
            let sources: Vec<&str> = ["file", "environment", "content"]
                .into_iter()
                .filter(|k| m.contains_key(*k))
                .collect();
            let mut labels = BTreeMap::new();
            if let Some(l) = m.get("labels") {
                for (k, v) in super::fields::key_values(l, &format!("{what}.labels"), &|_| None)? {
                    labels.insert(k, v);
                }
            }
            if external {
                if !sources.is_empty() {
                    return Err(format!(
                        "{what}: an external {} cannot have {}",
                        kind.name(),
                        sources.join(", ")
                    ));
                }
                out.push(StackObject {
                    kind,
                    key: key.clone(),
                    name: external_name.or(given_name).unwrap_or_else(|| key.clone()),
                    data: None,
                    labels,
                });
                continue;
            }
            let data = match sources.as_slice() {
                ["file"] => {
                    let f = m["file"]
                        .as_str()
                        .ok_or_else(|| format!("{what}.file: expected a path"))?;
                    read_object_file(&base.join(f), &what)?
                }
                ["environment"] => {
                    let var = m["environment"]
                        .as_str()
                        .ok_or_else(|| format!("{what}.environment: expected a variable name"))?;
                    vars.get(var)
                        .ok_or_else(|| format!("{what}: the variable {var} is not set"))?
                        .as_bytes()
                        .to_vec()
                }
                ["content"] => m["content"]
                    .as_str()
                    .ok_or_else(|| format!("{what}.content: expected a string"))?
                    .as_bytes()
                    .to_vec(),
                [] => {
                    return Err(format!(
                        "{what}: give its file: (or environment:), or external: true"
                    ))
                }
                more => return Err(format!("{what}: only one of {}", more.join(", "))),
            };
            labels.insert(STACK_LABEL.to_string(), stack.to_string());
            out.push(StackObject {
                kind,
                key: key.clone(),
                name: given_name.unwrap_or_else(|| format!("{stack}_{key}")),
                data: Some(data),
                labels,
            });
        }
    }
    Ok(out)
}

/// A whole number from a number or a string of digits (`uid: "1000"`).
fn id_number(v: &Value, what: &str) -> Result<u32, String> {
    match v {
        Value::String(s) => s.trim().parse().ok(),
        _ => v.as_u64().and_then(|n| u32::try_from(n).ok()),
    }
    .ok_or_else(|| format!("{what}: expected a whole number, not {v}"))
}

/// A service's `secrets:` or `configs:` list as references to the stack's objects.
pub fn service_refs(
    kind: SecretKind,
    v: &Value,
    what: &str,
    defined: &[StackObject],
) -> Result<Vec<SecretRef>, String> {
    let items = match v {
        Value::Array(items) => items,
        Value::Null => return Ok(Vec::new()),
        _ => return Err(format!("{what}: expected a list")),
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{what}[{i}]");
        let (key, m) = match item {
            Value::String(s) => (s.clone(), None),
            Value::Object(m) => {
                if let Some(k) = m.keys().find(|k| {
                    !["source", "target", "uid", "gid", "mode"].contains(&k.as_str())
                        && !k.starts_with("x-")
                }) {
                    return Err(format!("{at}: unknown key {k:?}"));
                }
                let source = m
                    .get("source")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{at}: a source is required"))?;
                (source.to_string(), Some(m))
            }
            _ => return Err(format!("{at}: expected a name or a mapping")),
        };
        let object = defined
            .iter()
            .find(|o| o.kind == kind && o.key == key)
            .ok_or_else(|| {
                format!(
                    "{at}: {} {key} is not defined in the top-level {}",
                    kind.name(),
                    plural(kind)
                )
            })?;
        let mut r = SecretRef {
            kind,
            id: 0,
            name: object.name.clone(),
            target: key.clone(),
            uid: 0,
            gid: 0,
            mode: 0,
        };
        if let Some(m) = m {
            if let Some(t) = m.get("target") {
                r.target = t
                    .as_str()
                    .ok_or_else(|| format!("{at}.target: expected a path"))?
                    .to_string();
            }
            if let Some(u) = m.get("uid") {
                r.uid = id_number(u, &format!("{at}.uid"))?;
            }
            if let Some(g) = m.get("gid") {
                r.gid = id_number(g, &format!("{at}.gid"))?;
            }
            if let Some(mode) = m.get("mode") {
                // A number (0440 in YAML is octal, as Compose reads it), or an octal string.
                r.mode = match mode {
                    Value::String(s) => {
                        u32::from_str_radix(s.trim().trim_start_matches("0o"), 8).ok()
                    }
                    _ => mode.as_u64().and_then(|n| u32::try_from(n).ok()),
                }
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| format!("{at}.mode: expected a file mode such as 0440"))?;
            }
        }
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::project::load_stack;
    use super::*;

    fn stack(yaml: &str, files: &[(&str, &str)]) -> Result<super::super::project::Stack, String> {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path = dir.path().join("docker-compose.yml");
        std::fs::write(&path, yaml).unwrap();
        load_stack(
            "app",
            &[path],
            [("DB_PW".to_string(), "s3cret".to_string())],
        )
    }

    #[test]
    fn top_level_secrets_and_configs_and_their_uses() {
        let s = stack(
            r#"
services:
  web:
    image: nginx
    secrets:
      - db_pw
      - source: api_key
        target: keys/api
        uid: "1000"
        gid: 1001
        mode: 0440
    configs:
      - site
      - source: inline
        target: /etc/inline.conf
        mode: "0444"
secrets:
  db_pw:
    file: ./db_pw.txt
  api_key:
    external: true
  from_env:
    environment: DB_PW
configs:
  site:
    file: site.conf
    labels: [tier=front]
  inline:
    name: shared_inline
    content: |
      a=1
"#,
            &[("db_pw.txt", "hunter2"), ("site.conf", "listen 80;")],
        )
        .unwrap();
        let names: Vec<(&str, &str, Option<&[u8]>)> = s
            .objects
            .iter()
            .map(|o| (o.key.as_str(), o.name.as_str(), o.data.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("api_key", "api_key", None),
                ("db_pw", "app_db_pw", Some(&b"hunter2"[..])),
                ("from_env", "app_from_env", Some(&b"s3cret"[..])),
                ("inline", "shared_inline", Some(&b"a=1\n"[..])),
                ("site", "app_site", Some(&b"listen 80;"[..])),
            ]
        );
        let site = s.objects.iter().find(|o| o.key == "site").unwrap();
        assert_eq!(site.labels[STACK_LABEL], "app");
        assert_eq!(site.labels["tier"], "front");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        let refs = &s.services[0].task.secrets;
        let short: Vec<(SecretKind, &str, &str, u32, u32, u32)> = refs
            .iter()
            .map(|r| {
                (
                    r.kind,
                    r.name.as_str(),
                    r.target.as_str(),
                    r.uid,
                    r.gid,
                    r.mode,
                )
            })
            .collect();
        assert_eq!(
            short,
            [
                (SecretKind::Secret, "app_db_pw", "db_pw", 0, 0, 0),
                (SecretKind::Secret, "api_key", "keys/api", 1000, 1001, 0o440),
                (SecretKind::Config, "app_site", "site", 0, 0, 0),
                (
                    SecretKind::Config,
                    "shared_inline",
                    "/etc/inline.conf",
                    0,
                    0,
                    0o444
                ),
            ]
        );
        // The data never shows in a debug print.
        assert!(!format!("{:?}", s.objects).contains("hunter2"));
    }

    #[test]
    fn undefined_external_and_malformed_objects_are_refused() {
        let svc = "services:\n  web:\n    image: nginx\n";
        for (yaml, want) in [
            (
                format!("{svc}    secrets: [nope]\n"),
                "service web.secrets[0]: secret nope is not defined in the top-level secrets",
            ),
            (
                format!("{svc}secrets:\n  a:\n    file: ./missing\n"),
                "secrets.a: ",
            ),
            (
                format!("{svc}secrets:\n  a:\n    external: true\n    file: ./x\n"),
                "an external secret cannot have file",
            ),
            (format!("{svc}secrets:\n  a: {{}}\n"), "give its file"),
            (
                format!("{svc}secrets:\n  a:\n    content: x\n"),
                "unknown key \"content\"",
            ),
            (
                format!("{svc}secrets:\n  a:\n    environment: UNSET_VAR_X\n"),
                "the variable UNSET_VAR_X is not set",
            ),
            (
                format!(
                    "{svc}    secrets:\n      - source: a\n        mode: 0999\n{}",
                    "secrets:\n  a:\n    environment: DB_PW\n"
                ),
                "mode",
            ),
            (
                format!("{svc}    configs:\n      - {{target: /x}}\n"),
                "a source is required",
            ),
        ] {
            let e = stack(&yaml, &[]).unwrap_err();
            assert!(e.contains(want), "{yaml}\n→ {e}");
        }
        // Over 500 KiB.
        let big = "x".repeat(500 * 1024 + 1);
        let e = stack(
            &format!("{svc}configs:\n  big:\n    file: big.txt\n"),
            &[("big.txt", &big)],
        )
        .unwrap_err();
        assert!(e.contains("larger than 500 KiB"), "{e}");
    }
}
